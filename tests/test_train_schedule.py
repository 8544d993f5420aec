"""Learning-rate schedules, gradient clipping and their resume safety (issue 14)."""

import math
from types import SimpleNamespace

import pytest
import torch

from femoe.errors import ConfigError
from femoe.train.config import config_from_dict
from femoe.train.trainer import lr_factor
from tests.test_train import tiny


def tc(**kw):
    base = dict(lr=1e-3, lr_final=1e-4, schedule="staircase", lr_hold=800, lr_decay=0.5)
    base.update(kw)
    return SimpleNamespace(**base)


def test_staircase_is_the_papers_schedule():
    c = tc()
    lrs = {k: 1e-3 * lr_factor(c, k, 4000) for k in (0, 799, 800, 1599, 1600, 2400, 3200, 10_000)}
    assert lrs[0] == lrs[799] == pytest.approx(1e-3)
    assert lrs[800] == lrs[1599] == pytest.approx(5e-4)
    assert lrs[1600] == pytest.approx(2.5e-4)
    assert lrs[2400] == pytest.approx(1.25e-4)
    assert lrs[3200] == lrs[10_000] == pytest.approx(1e-4)  # the floor


def test_other_schedules_at_given_steps():
    assert lr_factor(tc(schedule="constant"), 123, 200) == 1.0
    assert lr_factor(tc(schedule="exponential"), 100, 200) == pytest.approx(math.sqrt(0.1))
    assert lr_factor(tc(schedule="exponential"), 200, 200) == pytest.approx(0.1)
    assert lr_factor(tc(schedule="cosine"), 0, 200) == pytest.approx(1.0)
    assert lr_factor(tc(schedule="cosine"), 100, 200) == pytest.approx(0.55)
    assert lr_factor(tc(schedule="cosine"), 200, 200) == pytest.approx(0.1)


def test_schedule_options_are_validated():
    for bad, match in (({"schedule": "step"}, "train.schedule"), ({"lr_hold": 0}, "lr_hold"),
                       ({"lr_decay": 1.5}, "lr_decay"), ({"clip_grad": -1.0}, "clip_grad")):
        with pytest.raises(ConfigError, match=match):
            config_from_dict({"train": bad})
    with pytest.raises(ConfigError, match="row_weights"):
        config_from_dict({"solver": {"row_weights": "pde"}})


def test_trainer_follows_the_staircase_clips_and_resumes(tmp_path):
    import json

    from femoe.train.trainer import Trainer

    kw = dict(schedule="staircase", lr_hold=2, lr_decay=0.5, lr_final=1e-4, clip_grad=1e-3)
    straight = Trainer(tiny(tmp_path / "a", epochs=3, **kw), "soft")
    straight.fit(progress=False)
    recs = [json.loads(x) for x in (straight.dir / "log.jsonl").read_text().splitlines()]
    # lr logged after step k is the lr of step k + 1: 1e-3 for steps 1-2, 5e-4 for 3-4, ...
    assert [r["lr"] for r in recs] == pytest.approx([1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4, 1.25e-4])
    assert all(r["grad_norm"] > 0 for r in recs)
    first = Trainer(tiny(tmp_path / "b", epochs=3, **kw), "soft")
    first.fit(progress=False, until_epoch=1)
    second = Trainer(tiny(tmp_path / "b", epochs=3, **kw), "soft")
    assert second.resume()
    assert second.opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    second.fit(progress=False)
    a, b = straight.method.state_dict(), second.method.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
