"""``femoe run``: train every method of a config, evaluate on the test split, report.

Each method trains in its own process (spawned), so its peak memory is its own and one
method's failure does not take the others with it. Writes ``results/<name>/``:
``metrics.json``, ``comparison.png``, ``training.png``, ``sample.png``, predictions as VTU
(steady) or XDMF (time-dependent), and per method ``<method>/checkpoint.pt`` and ``log.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing as mp
import os
import queue
import resource
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from femoe.errors import CheckpointError, ConfigError
from femoe.train.config import Config, config_from_dict

log = logging.getLogger(__name__)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.no_grad()
def evaluate(task, method, batch_size: int = 4, train_until: float | None = None) -> dict[str, Any]:
    """Metrics of a trained method on the test split (and its predictions)."""
    method.eval()
    split = task.test
    errs, ress, jumps, times, preds, extrap, spans = [], [], [], [], [], [], []
    n_levels_train = None
    if task.time_dependent and train_until is not None:
        n_levels_train = int(np.searchsorted(task.times, train_until, side="right"))
    for start in range(0, split.inputs.shape[0], batch_size):
        dev = next(method.parameters()).device
        inp = split.inputs[start:start + batch_size].to(dev)
        ref = split.solutions[start:start + batch_size].double().to(dev)
        t0 = time.perf_counter()
        u, info = method(inp)
        times.append(time.perf_counter() - t0)
        params, u0 = task.layer_args(inp)
        errs.append(task.relative_l2(u, ref))
        if getattr(method, "basis_mode", False):  # basis too poor, or rows picking a poor member?
            spans.append(method.best_in_span(inp, ref))
        if n_levels_train is not None and n_levels_train < u.shape[1]:
            errs_after = task.relative_l2(u[:, n_levels_train:].contiguous(), ref[:, n_levels_train:].contiguous())
            extrap.append(errs_after)
        r = task.residual(u, params, u0)
        ress.append(torch.sqrt(r.square().mean(1)))
        if "interface_jump" in info:
            jumps.append(info["interface_jump"])
        preds.append(task.state(u, ref))  # lifted problems: the state u0 + s(t) z, not z
    err = torch.cat(errs)
    out = {
        "rel_l2_mean": float(err.mean()), "rel_l2_std": float(err.std()) if err.numel() > 1 else 0.0,
        "rel_l2": err.tolist(),
        "residual_rms": float(torch.cat(ress).mean()),
        "inference_s_per_batch": float(np.median(times)),
        "interface_jump": float(max(jumps)) if jumps else None,
    }
    if spans:
        e = torch.cat(spans)
        out["best_in_span_mean"] = float(e.mean())
        out["best_in_span_std"] = float(e.std()) if e.numel() > 1 else 0.0
        out["best_in_span"] = e.tolist()
    if extrap:
        e = torch.cat(extrap)
        out["rel_l2_after_train_until_mean"] = float(e.mean())
        out["rel_l2_after_train_until_std"] = float(e.std()) if e.numel() > 1 else 0.0
    out["_predictions"] = torch.cat(preds)[:2].cpu().numpy()
    return out


def train_and_evaluate(cfg_dict: dict, method_name: str, resume: bool = False, progress: bool = True) -> dict:
    """Train one method and evaluate it (run in a child process by :func:`run`)."""
    from femoe.train.task import Task
    from femoe.train.trainer import Trainer

    cfg = config_from_dict(cfg_dict)
    task = Task(cfg)
    rss0 = _rss_mb()
    trainer = Trainer(cfg, method_name, task)
    if resume:
        trainer.resume()
    t0 = time.perf_counter()
    trainer.fit(progress=progress)
    train_s = time.perf_counter() - t0
    metrics = evaluate(task, trainer.method, cfg.train.batch_size, cfg.train.train_until)
    steps = trainer.step_times
    metrics.update({
        "method": method_name,
        "train_seconds": train_s,
        "steps": trainer.step,
        "seconds_per_step": float(np.median(steps)) if steps else None,
        "peak_rss_mb": _rss_mb(),
        "peak_rss_over_start_mb": _rss_mb() - rss0,
        "parameters": sum(p.numel() for p in trainer.method.net.parameters()),
    })
    if cfg.data.test_params:
        metrics["test_mesh"] = evaluate_on_test_mesh(task, trainer.method, cfg.train.batch_size)
    return metrics


def evaluate_on_test_mesh(task, method, batch_size: int = 4) -> dict[str, Any]:
    """The trained network on the mesh of ``data.test_params`` (super-resolution): its own test
    data, constraint layer and experts rebuilt there (:meth:`Task.test_mesh_task`); the network
    runs on the mesh ``data.test_network_mesh`` names (:func:`~femoe.train.task.transfer_method`)."""
    from femoe.train.task import transfer_method

    fine = task.test_mesh_task()
    where = task.cfg.data.test_network_mesh
    m = evaluate(fine, transfer_method(method, fine, where), batch_size)
    m.pop("_predictions")
    return {"params": dict(task.cfg.data.test_params), "network_mesh": where, "n_dofs": fine.n, **m}


class _StopOnce:
    """SIGTERM handler raising KeyboardInterrupt once (so ``kill`` stops a run as Ctrl-C does:
    checkpoint written, children stopped); later signals are ignored while that happens."""

    def __init__(self):
        self.fired = False

    def __call__(self, signum, frame):
        if not self.fired:
            self.fired = True
            raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt once (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _StopOnce())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _child(q, cfg_dict, method, resume, progress):
    # Ctrl-C reaches parent and child, and the parent then also sends SIGTERM: one handler for
    # both, so that the second signal cannot interrupt the checkpoint the first one started
    stop = _StopOnce()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("skfem").setLevel(logging.WARNING)
    try:
        q.put(("ok", train_and_evaluate(cfg_dict, method, resume, progress)))
    except KeyboardInterrupt:
        q.put(("interrupted", None))
    except Exception as exc:  # reported by the parent, with the method's name
        import traceback

        q.put(("error", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))


def _stop_child(p, grace_s: float = 120.0) -> None:
    """Ask a method process to stop (it checkpoints and exits), kill it after ``grace_s``."""
    if p.is_alive():
        os.kill(p.pid, signal.SIGTERM)
    p.join(grace_s)
    if p.is_alive():
        log.error("method process %d did not stop within %.0f s; killed (its last epoch checkpoint stays)",
                  p.pid, grace_s)
        p.kill()
        p.join()


def _run_isolated(cfg: Config, method: str, resume: bool, progress: bool) -> tuple[str, Any]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q, cfg.to_dict(), method, resume, progress))
    p.start()
    try:
        while True:
            try:
                status, payload = q.get(timeout=1.0)
                break
            except queue.Empty:
                if not p.is_alive():  # died without a word: killed, out of memory, crashed
                    try:
                        status, payload = q.get(timeout=1.0)
                        break
                    except queue.Empty:
                        return "error", (f"ProcessDied: the method process exited with code {p.exitcode} before "
                                         "reporting (killed, out of memory or crashed); its last epoch checkpoint "
                                         "stays")
    except KeyboardInterrupt:
        _stop_child(p)
        raise
    p.join()
    return status, payload


def _method_files(cfg: Config, methods) -> list[Path]:
    out = cfg.run_dir
    files = [out / m / name for m in methods for name in ("checkpoint.pt", "log.jsonl")]
    return [f for f in files if f.exists()]


def check_run_folder(cfg: Config, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse what would mix two runs in one results folder, before any work is done.

    A fresh run (no ``resume``) over a folder that holds checkpoints or logs of the same methods
    is refused unless ``overwrite`` (which deletes them); a resumed run is refused when the config
    differs from the one a checkpoint was trained with (the message names the keys).
    """
    from femoe.train.config import describe_changes

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite contradict each other: resume continues the run in "
                          f"{cfg.run_dir}, overwrite deletes it; choose one")
    old = _method_files(cfg, cfg.methods)
    if not resume:
        if old and not overwrite:
            shown = ", ".join(str(f) for f in old[:3]) + (", ..." if len(old) > 3 else "")
            raise ConfigError(f"{cfg.run_dir} already holds a run ({shown}); continue it with --resume, replace it "
                              "with --overwrite, or give the run another name (name = ... in the config, or "
                              "--results DIR)")
        for f in old:
            f.unlink()
        return
    for m in cfg.methods:
        ck = cfg.run_dir / m / "checkpoint.pt"
        if not ck.is_file():
            continue
        try:
            meta = torch.load(ck, weights_only=False, map_location="cpu")["meta"]
            before = meta["config"]
        except Exception as exc:
            raise CheckpointError(f"{ck}: cannot read the checkpoint ({type(exc).__name__}: {exc}); delete it or "
                                  "start afresh with --overwrite") from None
        diffs = describe_changes(before, cfg.to_dict())
        if diffs:
            raise ConfigError(f"cannot resume {m} from {ck}: the config changed since it was written ({diffs}). "
                              "Restore those keys to resume, or start afresh with --overwrite")


def check_device(cfg: Config) -> None:
    """``train.device`` exists on this machine (checked before data generation, as the Trainer
    checks it)."""
    from femoe.train.trainer import _device

    _device(cfg.train.device)


def _write_metrics(path: Path, summary: dict, cfg: Config) -> None:
    """metrics.json, keeping the methods of an earlier run of the same config that this run did
    not redo; never replaced by a file without any method."""
    from femoe.train.config import config_changes

    methods = dict(summary["methods"])
    if path.is_file():
        try:
            old = json.loads(path.read_text())
            if not config_changes(old.get("config", {}), cfg.to_dict()):
                methods = {**{m: r for m, r in old.get("methods", {}).items() if m not in summary["errors"]},
                           **methods}
        except (ValueError, AttributeError):
            pass
    if not methods:
        log.error("no method finished: %s left as it was", path)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**summary, "methods": methods}, indent=2))
    tmp.replace(path)


def _load() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not available on this platform
        return None


def run(cfg: Config, *, resume: bool = False, progress: bool = True, isolate: bool = True,
        overwrite: bool = False) -> dict[str, Any]:
    """Train and evaluate every method of ``cfg``; returns the metrics (also written to disk).

    ``resume`` continues each method from its checkpoint (refused if the config changed);
    ``overwrite`` deletes the checkpoints and logs of an earlier run in the same folder (without
    it, a fresh run there is refused). SIGTERM stops the run as Ctrl-C does.
    """
    from femoe.train.task import Task

    check_device(cfg)
    check_run_folder(cfg, resume=resume, overwrite=overwrite)
    t_start, load_start = time.perf_counter(), _load()
    with sigterm_as_interrupt():
        out = cfg.run_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        task = Task(cfg)  # generates the data once, before the children start
        results: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for m in cfg.methods:
            log.info("== %s ==", m)
            if isolate:
                status, payload = _run_isolated(cfg, m, resume, progress)
                if status == "ok":
                    results[m] = payload
                elif status == "interrupted":
                    raise KeyboardInterrupt
                else:
                    errors[m] = payload
                    log.error("method %s failed: %s", m, payload.splitlines()[0])
            else:
                results[m] = train_and_evaluate(cfg.to_dict(), m, resume, progress)
    preds = {m: r.pop("_predictions") for m, r in results.items()}
    summary = {"config": cfg.to_dict(), "problem": task.spec.name, "n_dofs": task.n,
               "levels": getattr(task, "n_levels", None), "methods": results, "errors": errors,
               # data, training and evaluation of every method (not the plots); the machine's load
               # average (1, 5, 15 min) before and after says how shared it was
               "wall_seconds": time.perf_counter() - t_start, "load": {"start": load_start, "end": _load()}}
    _write_metrics(out / "metrics.json", summary, cfg)
    from femoe.train.report import plots, table, write_predictions

    summary["table"] = table(results)
    if results:
        try:
            plots(task, cfg, results, preds)
            write_predictions(task, cfg, preds)
        except Exception as exc:  # plots must not lose the metrics
            log.error("writing plots/predictions failed: %s", exc)
    return summary
