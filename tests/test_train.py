"""Trainer, run, resume, predict: end to end on a tiny diffusion-sorption problem."""

import json

import numpy as np
import pytest
import torch

from femoe.errors import CheckpointError, ConfigError
from femoe.train.config import config_from_dict, load_config


def tiny(tmp_path, methods=("soft", "pihc"), epochs=2, **train):
    return config_from_dict({
        "name": "tiny", "results": str(tmp_path / "results"), "methods": list(methods),
        "problem": {"name": "diffusion_sorption_1d", "params": {"n_cells": 16, "n_saved": 5, "substeps": 8}},
        "data": {"n_train": 4, "n_test": 2, "dir": str(tmp_path / "data")},
        "network": {"n_basis": 4, "width": 8, "depth": 2, "sensors": 4},
        "experts": {"k": 2, "partition": "slab"},
        "train": {"epochs": epochs, "batch_size": 2, **train},
    })


def test_config_errors_name_the_key_and_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*valid keys"):
        config_from_dict({"train": {"epoch": 3}})
    with pytest.raises(ConfigError, match="methods"):
        config_from_dict({"methods": ["hard"]})
    with pytest.raises(ConfigError, match="must be an integer"):
        config_from_dict({"train": {"epochs": 1.5}})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    (tmp_path / "bad.toml").write_text("name = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_default_config_is_valid():
    from femoe.cli.run import DEFAULT_CONFIG

    cfg = load_config(DEFAULT_CONFIG)
    assert cfg.methods == ["soft", "pihc", "moe", "patch", "pihc_patch"]
    assert cfg.problem.name == "diffusion_sorption_1d"


def test_resume_continues_bit_for_bit(tmp_path):
    from femoe.train.trainer import Trainer

    straight = Trainer(tiny(tmp_path / "a", epochs=2), "pihc")
    straight.fit(progress=False)
    first = Trainer(tiny(tmp_path / "b", epochs=2), "pihc")
    first.fit(progress=False, until_epoch=1)  # as if interrupted after one epoch
    second = Trainer(tiny(tmp_path / "b", epochs=2), "pihc")
    assert second.resume() and second.epoch == 1
    second.fit(progress=False)
    a, b = straight.method.state_dict(), second.method.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and training changed the weights
    fresh = Trainer(tiny(tmp_path / "c", epochs=1), "pihc").method.state_dict()
    assert any(not torch.equal(a[k], fresh[k]) for k in a)


def test_keyboard_interrupt_saves_a_checkpoint(tmp_path, monkeypatch):
    from femoe.train import trainer as tr

    t = tr.Trainer(tiny(tmp_path, epochs=3), "soft")
    calls = {"n": 0}
    real = tr.loss_of

    def interrupting(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "loss_of", interrupting)
    with pytest.raises(KeyboardInterrupt):
        t.fit(progress=False)
    st = torch.load(t.checkpoint_path, weights_only=False)
    assert st["step"] == 2
    assert len((t.dir / "log.jsonl").read_text().splitlines()) == 2


def test_run_writes_metrics_plots_and_predictions_and_predict_matches(tmp_path, capsys):
    from femoe.train.predict import predict
    from femoe.train.run import run

    cfg = tiny(tmp_path, methods=("soft", "moe", "patch"), epochs=1)
    summary = run(cfg, isolate=False, progress=False)
    out = cfg.run_dir
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["methods"]) == {"soft", "moe", "patch"} and not m["errors"]
    for name, r in m["methods"].items():
        assert 0 < r["rel_l2_mean"] < 10 and r["seconds_per_step"] > 0 and r["peak_rss_mb"] > 0
    assert m["methods"]["moe"]["interface_jump"] is not None
    train_s = sum(r["train_seconds"] for r in m["methods"].values())
    assert m["wall_seconds"] > train_s  # the whole run: data, training, evaluation
    assert set(m["load"]) == {"start", "end"}
    for f in ("comparison.png", "training.png", "sample.png", "predictions.xdmf"):
        assert (out / f).stat().st_size > 0
    assert "rel L2 mean" in summary["table"] and "moe" in summary["table"]
    # predict from the checkpoint reproduces the evaluation's relative error
    from femoe.data import read_dataset

    test = read_dataset(tmp_path / "data" / "test.h5")
    task, u = predict(out / "patch" / "checkpoint.pt", test.inputs[:2])
    err = task.relative_l2(torch.as_tensor(u), torch.as_tensor(test.solutions[:2]))
    np.testing.assert_allclose(err.numpy(), m["methods"]["patch"]["rel_l2"], rtol=1e-8)
    assert summary["methods"]["patch"]["rel_l2_mean"] == pytest.approx(float(err.mean()))


def test_predict_refuses_a_checkpoint_for_another_mesh(tmp_path):
    from femoe.train.predict import load_model
    from femoe.train.trainer import Trainer

    t = Trainer(tiny(tmp_path, epochs=1), "soft")
    t.fit(progress=False)
    st = torch.load(t.checkpoint_path, weights_only=False)
    st["meta"]["config"]["problem"]["params"]["n_cells"] = 32
    bad = tmp_path / "bad.pt"
    torch.save(st, bad)
    with pytest.raises(CheckpointError, match="another mesh"):
        load_model(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")
