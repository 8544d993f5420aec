"""Faults stop a run with a named error and leave a usable checkpoint (issue 15): a NaN from the
network, SIGTERM to ``femoe run``, and under torchrun (gloo) a rank that raises or hangs."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from femoe.errors import NonFiniteError
from femoe.train.config import load_config
from femoe.train.trainer import Trainer

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_torchrun_worker.py"


def _smoke(tmp_path, method, **train):
    cfg = load_config(HERE / "configs" / "smoke_poisson_mms.toml")
    cfg.methods, cfg.results, cfg.data.dir = [method], str(tmp_path / "results"), str(tmp_path / "data")
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg


@pytest.mark.parametrize("method", ["soft", "pihc"])
def test_nan_from_the_network_stops_with_a_named_error_and_a_usable_checkpoint(tmp_path, method):
    cfg = _smoke(tmp_path, method, epochs=2, max_steps_per_epoch=2)
    trainer = Trainer(cfg, method)
    net = trainer.method.net
    forward, calls = net.forward, []

    def poisoned(*args, **kwargs):  # the third step's network output is NaN
        calls.append(1)
        out = forward(*args, **kwargs)
        return out * float("nan") if len(calls) == 3 else out

    net.forward = poisoned
    with pytest.raises(NonFiniteError, match="step 3.*last finite state"):
        trainer.fit(progress=False)
    st = torch.load(trainer.checkpoint_path, weights_only=False)
    assert st["step"] == 2
    assert all(torch.isfinite(v).all() for v in st["model"].values() if v.is_floating_point())
    # usable: a new trainer resumes from it and finishes
    again = Trainer(cfg, method)
    assert again.resume() and again.step == 2
    again.fit(progress=False)
    assert again.step == 4
    assert all(torch.isfinite(p).all() for p in again.method.parameters())


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        out += [int(c) for c in (task / "children").read_text().split()]
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs /proc to find the method process")
def test_sigterm_stops_femoe_run_like_ctrl_c(tmp_path):
    cfg = tmp_path / "long.toml"
    text = (HERE / "configs" / "smoke_poisson_mms.toml").read_text()
    text = text.replace('methods = ["soft", "pihc", "moe", "patch"]', 'methods = ["soft"]')
    text = text.replace('name = "smoke_poisson_mms"', 'name = "long"')
    text = text.replace("epochs = 1", "epochs = 100000").replace("[data]\n", f'[data]\ndir = "{tmp_path}/data"\n')
    cfg.write_text(text)
    proc = subprocess.Popen([sys.executable, "-m", "femoe", "run", str(cfg), "--results", str(tmp_path / "r"),
                             "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = tmp_path / "r" / "long" / "soft" / "log.jsonl"
    try:
        deadline = time.time() + 120
        while not (log.is_file() and log.stat().st_size > 0) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert log.is_file() and proc.poll() is None, "no training step within 120 s"
        kids = [c for c in _children(proc.pid) if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()]
        assert kids, "the method should train in a child process"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    assert not any(_alive(k) for k in kids), "the method process outlived femoe run"
    st = torch.load(tmp_path / "r" / "long" / "soft" / "checkpoint.pt", weights_only=False)
    assert st["step"] == len(log.read_text().splitlines()) >= 2
    assert not (tmp_path / "r" / "long" / "metrics.json").exists()


# ---------------------------------------------------------------- torchrun (gloo)
def _torchrun(tmp_path, *args, timeout=180):
    exe = shutil.which("torchrun")
    cmd = ([exe] if exe else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc-per-node", "2", "--standalone", str(WORKER), *args]
    t0 = time.time()
    proc = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                          text=True, timeout=timeout)
    return proc, time.time() - t0


@pytest.mark.distributed
def test_a_hanging_rank_is_stopped_after_the_timeout(tmp_path):
    proc, seconds = _torchrun(tmp_path, "--mode", "hang", "--timeout", "5", "--out", str(tmp_path / "h"))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rank 0: DistributedError" in log and "all_reduce failed" in log, log[-3000:]
    assert seconds < 90  # the sleeping rank (3600 s) was stopped, not waited for
    assert not (tmp_path / "h").exists()  # no rank wrote a result


@pytest.mark.distributed
@pytest.mark.slow
def test_a_raising_rank_stops_the_run_with_its_error(tmp_path):
    proc, _ = _torchrun(tmp_path, "--mode", "raise", "--timeout", "30", "--out", str(tmp_path / "f"))
    log = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "RuntimeError: rank 1 failed on purpose" in log
    assert "rank 0: DistributedError" in log  # the peer learns of it as a named error, not a hang
    assert not (tmp_path / "f").exists()


@pytest.mark.distributed
@pytest.mark.slow
def test_leaf_tensor_gradients_are_partial_per_rank_and_summed_by_sync_gradients(tmp_path):
    proc, _ = _torchrun(tmp_path, "--mode", "ok", "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = importlib.util.spec_from_file_location("_torchrun_worker", WORKER)
    worker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(worker)
    layer, B, kappa, x = worker.setup(distributed=False)
    u, _ = layer(B, {"kappa": kappa})
    worker.loss_of(u, x).backward()
    ranks = [torch.load(tmp_path / "ddp" / f"result_rank{r}.pt") for r in (0, 1)]
    for res in ranks:
        torch.testing.assert_close(res["u"], u.detach(), rtol=0, atol=1e-12)
        torch.testing.assert_close(res["B"], B.grad, rtol=0, atol=1e-10)
        torch.testing.assert_close(res["kappa"], kappa.grad, rtol=0, atol=1e-10)
    for name, full in (("B", B.grad), ("kappa", kappa.grad)):
        assert not torch.allclose(ranks[0]["partial"][name], full)  # one rank alone holds a share
        torch.testing.assert_close(ranks[0]["partial"][name] + ranks[1]["partial"][name], full, rtol=0, atol=1e-10)
