"""PI-HC-MoE training options: the experts' weights in the info record, the "experts" loss,
the interface loss weight and the PI-HC warm start (issue 14)."""

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError
from femoe.experts import HardConstraintMoE
from femoe.helpers import dot, grad
from femoe.train.config import config_from_dict

F64 = torch.float64


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("steady", [True, False])
def test_info_weights_reproduce_each_owners_output(batch, steady, make_square, make_heat):
    """``info.weights``: B @ w_k equals the stitched output on every DOF expert k owns (so the
    order of samples, experts and groups in the record is right), and carries the gradient."""
    if steady:  # -lap u = 1, u = 0 on "left" and "right"
        p = make_square("unit_load", 2)
    else:  # u_t = div(0.05 (1 + u^2) grad u), implicit Euler, u = 1 on "left"
        p = make_heat(lambda u, v, w: 0.05 * dot((1 + u**2) * grad(u), grad(v)), 4, theta=1.0,
                      dirichlet={"left": 1.0})
    g = torch.Generator().manual_seed(3)
    layer = HardConstraintMoE(p, 3, partition="rcb" if steady else "slab", **({} if steady else {"dt": 0.1}))
    shape = (batch, p.n, 5) if steady else (batch, 4, p.n, 5)
    B = torch.randn(*shape, dtype=F64, generator=g).requires_grad_(True)
    args = () if steady else (None, torch.full((batch, p.n), 0.5, dtype=F64))
    u, info = layer(B, *args)
    assert sum(len(k) for k, _ in info.weights) == 3
    owner = layer.partition.owner
    for experts, w in info.weights:
        assert w.shape == (batch, len(experts), 5)
        for j, k in enumerate(experts):
            uk = torch.einsum("b...N,bN->b...", B, w[:, j])
            own = torch.from_numpy(np.flatnonzero(owner == k))
            torch.testing.assert_close(uk[..., own], u[..., own], rtol=1e-10, atol=1e-10)
    w = torch.cat([w for _, w in info.weights], 1)
    assert w.requires_grad
    (gB,) = torch.autograd.grad(w.square().sum(), B)
    assert torch.isfinite(gB).all() and gB.abs().max() > 0


def tiny(tmp_path, steady=False, **experts):
    problem = ({"name": "poisson_mms", "params": {"refine": 2, "nonlinear": True}} if steady else
               {"name": "diffusion_sorption_1d", "params": {"n_cells": 16, "n_saved": 5, "substeps": 8}})
    return config_from_dict({
        "name": "tiny", "results": str(tmp_path / "results"), "methods": ["moe"], "problem": problem,
        "data": {"n_train": 4, "n_test": 2, "dir": str(tmp_path / "data")},
        "network": {"n_basis": 4, "width": 8, "depth": 2, "sensors": 1 if steady else 4},
        "experts": {"k": 2, "partition": "rcb" if steady else "slab", **experts},
        "train": {"epochs": 1, "batch_size": 2},
    })


def _method(tmp_path, steady=False, **experts):
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    cfg = tiny(tmp_path, steady, **experts)
    task = Task(cfg)
    return task, build_method("moe", task)


@pytest.mark.parametrize("steady", [False, True])
@pytest.mark.parametrize("batch", [1, 2])
def test_experts_loss_is_the_mean_residual_of_every_experts_weights_on_the_whole_mesh(tmp_path, batch, steady):
    from femoe.train.trainer import loss_of

    task, m = _method(tmp_path, steady, loss="experts")
    m.train()
    inputs = task.train.inputs[:batch]
    torch.manual_seed(0)
    loss, _, _ = loss_of(task, m, inputs, None)
    B = m.network_output(inputs)
    params, u0 = task.layer_args(inputs)
    _, info = m.layer(B, params, u0)
    ref = []
    for _, w in info.weights:
        for j in range(w.shape[1]):
            uk = torch.einsum("b...N,bN->b...", B, w[:, j])
            ref.append(task.residual(uk, params, u0).square().mean())
    torch.testing.assert_close(loss, torch.stack(ref).mean(), rtol=1e-9, atol=0)
    # "both": the average of that and the stitched output's loss; "stitched": the output's alone
    stitched = task.residual(m(inputs)[0], params, u0).square().mean()
    m.task.cfg.experts.loss = "both"
    torch.testing.assert_close(loss_of(task, m, inputs, None)[0], 0.5 * (loss + stitched), rtol=1e-9, atol=0)
    m.task.cfg.experts.loss = "stitched"
    torch.testing.assert_close(loss_of(task, m, inputs, None)[0], stitched, rtol=1e-9, atol=0)
    loss.backward()
    assert all(torch.isfinite(q.grad).all() for q in m.parameters() if q.grad is not None)


def test_interface_loss_weight_scales_the_interface_rows_only(tmp_path):
    task, m = _method(tmp_path, interface_loss_weight=0.25)
    iface = np.asarray(m.layer.partition.interface)
    assert iface.size > 0
    w = m.loss_dof_weight.numpy()
    assert np.allclose(w[iface], 0.5) and np.allclose(np.delete(w, iface), 1.0)
    u = torch.rand(1, task.n_levels, task.n, dtype=F64)
    params, u0 = task.layer_args(task.train.inputs[:1])
    r1 = task.residual(u, params, u0).reshape(-1)
    rw = task.residual(u, params, u0, m.loss_dof_weight).reshape(-1)
    n_rows = (task.n_levels - 1) * task.n
    scale = np.tile(w, task.n_levels - 1)
    torch.testing.assert_close(rw[:n_rows], r1[:n_rows] * torch.from_numpy(scale), rtol=1e-12, atol=0)
    torch.testing.assert_close(rw[n_rows:], r1[n_rows:], rtol=0, atol=0)  # initial rows untouched
    _, plain = _method(tmp_path)
    assert plain.loss_dof_weight is None


def test_warm_start_trains_through_one_constraint_then_the_experts(tmp_path):
    task, m = _method(tmp_path, warm_start=3)
    inputs = task.train.inputs[:2]
    m.train()
    m.train_step = 2
    _, info = m(inputs)
    assert info.get("warm_start") is True and "interface_jump" not in info
    m.train_step = 3
    _, info = m(inputs)
    assert "interface_jump" in info and "warm_start" not in info
    m.train_step = 0
    m.eval()  # evaluation always uses the experts
    with torch.no_grad():
        _, info = m(inputs)
    assert "interface_jump" in info


def test_moe_training_options_are_validated():
    with pytest.raises(ConfigError, match="experts.loss|loss"):
        config_from_dict({"experts": {"loss": "global"}})
    with pytest.raises(ConfigError, match="interface_loss_weight"):
        config_from_dict({"experts": {"interface_loss_weight": -1.0}})
    with pytest.raises(ConfigError, match="warm_start"):
        config_from_dict({"experts": {"warm_start": -2}})


def test_moe_loss_sweep_script_runs_and_reports_every_variant(tmp_path):
    """benchmarks/moe_loss_sweep.py on a tiny config: it trains the variants asked for, reads a
    finished variant instead of retraining it, and writes the JSON the docs cite (with the
    PI-HC-on-this-basis cross check)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'''name = "tiny"
results = "{tmp_path / 'results'}"
[problem]
name = "diffusion_sorption_1d"
params = {{ n_cells = 16, n_saved = 4, substeps = 8 }}
[data]
n_train = 2
n_test = 2
dir = "{tmp_path / 'data'}"
[network]
n_basis = 4
width = 8
depth = 2
sensors = 4
[experts]
k = 2
partition = "slab"
[train]
batch_size = 2
max_steps_per_epoch = 1
''')
    out = tmp_path / "sweep.json"
    base = [sys.executable, str(root / "benchmarks" / "moe_loss_sweep.py"), "--config", str(cfg)]
    cmd = base + ["--only", "experts", "stitched", "--cross", "--k-sweep", "1", "2", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert set(doc["variants"]) == {"experts", "stitched"}
    for name, v in doc["variants"].items():
        assert v["experts"]["loss"] == name and v["steps"] == 15  # 15 epochs of one step
        assert 0 < v["rel_l2_mean"] < 10 and 0 < v["pihc_on_this_basis"] < 10
    # the K sweep runs on the last MoE variant listed; K = 1 is PI-HC on that basis
    assert doc["k_sweep"]["variant"] == "stitched" and set(doc["k_sweep"]["rel_l2_mean"]) == {"1", "2"}
    assert doc["k_sweep"]["rel_l2_mean"]["1"] == doc["variants"]["stitched"]["pihc_on_this_basis"]
    first = (tmp_path / "results" / "moe_sweep_experts" / "metrics.json").stat().st_mtime
    res = subprocess.run(base + ["--only", "experts", "--out", str(out)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "results" / "moe_sweep_experts" / "metrics.json").stat().st_mtime == first  # read, not rerun


def test_profile_step_script_times_trained_networks(tmp_path):
    """benchmarks/profile_step.py --trained: every method starts from the checkpoint a run
    wrote (a wrong key or path would fail here) and the ratios are written."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from femoe.train.config import load_config
    from femoe.train.run import run

    root = Path(__file__).resolve().parents[1]
    smoke = root / "tests" / "configs" / "smoke_diffusion_sorption_1d.toml"
    cfg = load_config(smoke)  # the network the profile builds from the same config
    cfg.methods = ["soft", "pihc", "moe"]
    cfg.results, cfg.data.dir = str(tmp_path / "results"), str(tmp_path / "data")
    run(cfg, isolate=False, progress=False)
    out = tmp_path / "profile.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "profile_step.py"), "--config",
                          str(smoke),
                          "--methods", "soft,pihc,moe", "--steps", "1", "--profile-steps", "1",
                          "--trained", str(cfg.run_dir), "--out", str(out)],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    assert doc["trained"] == str(cfg.run_dir) and "--trained" in doc["command"]
    assert set(doc["ratios"]) == {"pihc_over_soft", "moe_over_pihc"}
    assert all(doc["methods"][m]["seconds_per_step_median"] > 0 for m in ("soft", "pihc", "moe"))
