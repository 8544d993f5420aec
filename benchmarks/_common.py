"""Shared helpers for benchmarks: machine record, timing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    import numpy
    import scipy
    import torch

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
    }
    try:
        import skfem

        info["scikit-fem"] = skfem.__version__
    except Exception:  # pragma: no cover - informational only
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def command_line(script: str, argv: list[str] | None = None, env: str = "OMP_NUM_THREADS=1 ") -> str:
    """The shell command that reruns this benchmark: ``env``, ``python benchmarks/<script>`` and
    the arguments (``sys.argv[1:]`` by default), each shell-quoted (a ``--set`` value such as
    ``data.key="test"`` keeps its TOML quotes)."""
    args = sys.argv[1:] if argv is None else argv
    return f"{env}python benchmarks/{script}" + (" " + shlex.join(args) if args else "")


def apply_sets(d: dict, items) -> dict:
    """Apply ``--set section.key=value`` overrides (TOML values) to a config dict, in place."""
    import tomllib

    for item in items:
        key, _, value = item.partition("=")
        sec, _, sub = key.partition(".")
        d[sec][sub] = tomllib.loads(f"v = {value}")["v"]
    return d


def load() -> list[float]:
    """The machine's load average (1, 5, 15 min), rounded: how shared it was."""
    return [round(x, 2) for x in os.getloadavg()]


def training_step(trainer, inputs, solutions):
    """A function taking one optimiser step of ``trainer`` (a :class:`femoe.train.trainer.Trainer`)
    on a fixed batch, as its training loop does (``loss_of``, ``backward``, gradient clipping,
    ``opt.step``); it returns the step's info record."""
    import torch

    from femoe.train.trainer import loss_of

    method, tc = trainer.method, trainer.cfg.train

    def step():
        trainer.opt.zero_grad(set_to_none=True)
        loss, _, info = loss_of(trainer.task, method, inputs, solutions, trainer.levels)
        loss.backward()
        if tc.clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(method.parameters(), tc.clip_grad)
        trainer.opt.step()
        return info

    return step


def timeit(fn, repeat: int = 3, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def alternating(fns: dict, repeat: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall times of the callables ``fns`` (name -> function), ``repeat`` rounds in which each runs
    once in turn (so a drift of the shared machine's load falls on all of them alike), after
    ``warmup`` untimed rounds: ``{name: [seconds per round]}``."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    secs = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            secs[name].append(time.perf_counter() - t)
    return secs


def write(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, default=float))
    return path
