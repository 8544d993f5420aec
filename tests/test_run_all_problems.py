"""Every bundled problem runs through ``femoe run`` with every method (tiny smoke configs in
tests/configs/smoke_<problem>.toml: a few steps each, seconds)."""

import json
import math
from pathlib import Path

import pytest

from femoe.problems import PROBLEMS
from femoe.train.config import METHODS, load_config
from femoe.train.run import run

CONFIGS = Path(__file__).resolve().parent / "configs"


def test_every_problem_has_a_smoke_config():
    assert sorted(p.stem.removeprefix("smoke_") for p in CONFIGS.glob("smoke_*.toml")) == sorted(PROBLEMS)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_femoe_run_trains_every_method(problem, tmp_path):
    cfg = load_config(CONFIGS / f"smoke_{problem}.toml")
    assert cfg.problem.name == problem and sorted(cfg.methods) == sorted(METHODS)
    cfg.results = str(tmp_path / "results")
    cfg.data.dir = str(tmp_path / "data")
    summary = run(cfg, progress=False, isolate=False)
    assert summary["errors"] == {}
    metrics = json.loads((cfg.run_dir / "metrics.json").read_text())
    assert metrics["problem"] == problem
    assert sorted(metrics["methods"]) == sorted(METHODS)
    for m, r in metrics["methods"].items():
        assert r["steps"] == cfg.train.max_steps_per_epoch * cfg.train.epochs, m
        assert math.isfinite(r["rel_l2_mean"]) and math.isfinite(r["residual_rms"]), m
        log = (cfg.run_dir / m / "log.jsonl").read_text().splitlines()
        assert len(log) == r["steps"], m
