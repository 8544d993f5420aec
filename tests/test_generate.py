"""femoe generate: files, determinism, workers, resuming, and bad input."""

import os

import h5py
import numpy as np
import pytest

from femoe.cli import main
from femoe.data import generate, read_dataset
from femoe.errors import DataError
from femoe.problems import get_problem

# a small transient problem: 32 cells, 5 saved levels
DS_SMALL = ["--param", "n_cells=32", "--param", "T=20", "--param", "n_saved=5", "--param", "substeps=8",
            "--param", "grading=2"]
DS_PARAMS = {"n_cells": 32, "T": 20.0, "n_saved": 5, "substeps": 8, "grading": 2}


def _arrays(path):
    d = read_dataset(path)
    return d.points, d.times, d.inputs, d.solutions


def test_cli_writes_train_and_test_files(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(["generate", "diffusion_sorption_1d", "--n-train", "3", "--n-test", "2", "--out", str(out),
               "--seed", "7", "--no-progress", *DS_SMALL])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == ["test.h5", "train.h5"]
    d = read_dataset(out / "train.h5")
    assert d.points.shape == (33, 1)
    np.testing.assert_allclose(d.times, [0, 5, 10, 15, 20])
    assert d.inputs.shape == (3, 33) and d.solutions.shape == (3, 5, 33)
    np.testing.assert_array_equal(d.solutions[:, 0], d.inputs)  # level 0 is the initial condition
    assert len(np.unique(d.inputs[:, 0])) == 3
    a = d.attrs
    assert a["problem"] == "diffusion_sorption_1d" and a["seed"] == 7 and a["split"] == "train"
    assert a["element"] == "ElementLineP1" and a["femoe_version"] and a["complete"]
    assert d.parameters["n_cells"] == 32 and d.parameters["D"] == 5e-4
    assert d.generator["n_samples"] == 3
    t = read_dataset(out / "test.h5")
    assert t.solutions.shape == (2, 5, 33)
    assert not np.isin(t.inputs[:, 0], d.inputs[:, 0]).any()  # splits draw different inputs
    printed = capsys.readouterr().out
    assert "train" in printed and "3x5x33" in printed


def test_steady_files_have_no_times(tmp_path):
    paths = generate("poisson_mms", tmp_path, 2, 1, seed=0, progress=False, params={"refine": 2})
    with h5py.File(paths["train"]) as f:
        assert "times" not in f and f["solutions"].shape == (2, 25) and f["inputs"].shape == (2, 1)


def test_same_seed_same_arrays_other_seed_other_arrays(tmp_path):
    a = generate("darcy_2d", tmp_path / "a", 2, 1, seed=3, progress=False)
    b = generate("darcy_2d", tmp_path / "b", 2, 1, seed=3, progress=False)
    c = generate("darcy_2d", tmp_path / "c", 2, 1, seed=4, progress=False)
    for split in ("train", "test"):
        for x, y in zip(_arrays(a[split]), _arrays(b[split])):
            if x is not None:
                assert x.tobytes() == y.tobytes()
    assert not np.array_equal(read_dataset(a["train"]).inputs, read_dataset(c["train"]).inputs)


def test_workers_give_the_same_bytes(tmp_path):
    serial = generate("diffusion_sorption_1d", tmp_path / "s", 4, 1, seed=1, progress=False, params=DS_PARAMS)
    para = generate("diffusion_sorption_1d", tmp_path / "p", 4, 1, seed=1, workers=2, progress=False,
                    params=DS_PARAMS)
    for x, y in zip(_arrays(serial["train"]), _arrays(para["train"])):
        assert x.tobytes() == y.tobytes()


def test_interrupted_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    # shards of one sample (batch=1): the interruption after 3 solved samples leaves 3 done
    spec = get_problem("diffusion_sorption_1d")
    full = generate("diffusion_sorption_1d", tmp_path / "full", 5, 2, seed=2, progress=False, params=DS_PARAMS)

    original = type(spec).reference_batch
    calls = []

    def flaky(self, problem, samples, sample_ids=None):
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.extend(sample_ids)
        return original(self, problem, samples, sample_ids)

    monkeypatch.setattr(type(spec), "reference_batch", flaky)
    out = tmp_path / "resume"
    with pytest.raises(KeyboardInterrupt):
        generate("diffusion_sorption_1d", out, 5, 2, seed=2, progress=False, params=DS_PARAMS, batch=1)
    assert not (out / "train.h5").exists()  # nothing that looks complete
    partial = out / "train.h5.partial"
    with h5py.File(partial) as f:
        assert f["_done"][()].tolist() == [True, True, True, False, False]
        assert not f.attrs["complete"]
    with pytest.raises(DataError, match="unfinished"):
        read_dataset(partial)

    counted = []
    monkeypatch.setattr(type(spec), "reference_batch",
                        lambda self, p, s, sample_ids=None: counted.extend(sample_ids) or original(self, p, s, sample_ids))
    # resumed with the default (larger) shards: the data do not depend on the shard size
    paths = generate("diffusion_sorption_1d", out, 5, 2, seed=2, progress=False, params=DS_PARAMS)
    assert counted == [3, 4, 0, 1]  # the two missing train samples, then the test split
    assert not partial.exists()
    for split in ("train", "test"):
        for x, y in zip(_arrays(full[split]), _arrays(paths[split])):
            assert x.tobytes() == y.tobytes()
    # a third run finds both splits complete and solves nothing
    counted.clear()
    generate("diffusion_sorption_1d", out, 5, 2, seed=2, progress=False, params=DS_PARAMS)
    assert counted == []


def test_partial_file_from_other_settings_is_not_mixed_in(tmp_path, monkeypatch):
    spec = get_problem("poisson_mms")
    original = type(spec).reference

    def stop(self, problem, sample):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(spec), "reference", stop)
    with pytest.raises(KeyboardInterrupt):
        generate("poisson_mms", tmp_path, 3, 1, seed=0, progress=False, params={"refine": 2})
    monkeypatch.setattr(type(spec), "reference", original)
    with pytest.raises(DataError, match="other settings"):
        generate("poisson_mms", tmp_path, 3, 1, seed=1, progress=False, params={"refine": 2})


def test_complete_files_from_other_settings_need_overwrite(tmp_path):
    generate("poisson_mms", tmp_path, 2, 1, seed=0, progress=False, params={"refine": 2})
    with pytest.raises(DataError, match="--overwrite"):
        generate("poisson_mms", tmp_path, 2, 1, seed=9, progress=False, params={"refine": 2})
    paths = generate("poisson_mms", tmp_path, 2, 1, seed=9, progress=False, params={"refine": 2}, overwrite=True)
    assert read_dataset(paths["train"]).attrs["seed"] == 9


@pytest.mark.parametrize("argv,message", [
    (["burgers", "--n-train", "2", "--n-test", "1"], "Pick one of"),
    (["darcy_2d", "--n-train", "0", "--n-test", "1"], "n_train must be a positive integer"),
    (["darcy_2d", "--n-train", "2", "--n-test", "-3"], "n_test must be a positive integer"),
    (["darcy_2d", "--n-train", "2", "--n-test", "1", "--workers", "0"], "workers"),
    (["diffusion_sorption_1d", "--n-train", "2", "--n-test", "1", "--param", "phi=1.5"], "phi"),
    (["diffusion_sorption_1d", "--n-train", "2", "--n-test", "1", "--param", "D=-1"], "physical range"),
    (["darcy_2d", "--n-train", "2", "--n-test", "1", "--param", "nope=1"], "valid parameters"),
    (["darcy_2d", "--n-train", "2", "--n-test", "1", "--param", "oops"], "KEY=VALUE"),
])
def test_bad_input_is_a_clear_error_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "never"
    rc = main(["generate", *argv, "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc != 0
    assert message in err and "Traceback" not in err
    if message == "Pick one of":
        for name in ("darcy_2d", "diffusion_sorption_1d", "navier_stokes_2d", "poisson_mms"):
            assert name in err
    assert not out.exists()


def test_unwritable_output_folder(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere (root)")
        rc = main(["generate", "poisson_mms", "--n-train", "1", "--n-test", "1", "--out", str(locked / "x")])
        assert rc != 0 and "cannot write" in capsys.readouterr().err
    finally:
        os.chmod(locked, 0o700)


def test_output_folder_below_a_file_cannot_be_created(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("x")
    rc = main(["generate", "poisson_mms", "--n-train", "1", "--n-test", "1", "--out", str(f / "sub")])
    assert rc != 0 and "cannot write to output folder" in capsys.readouterr().err


def test_output_path_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "file.txt"
    f.write_text("not a folder")
    rc = main(["generate", "poisson_mms", "--n-train", "1", "--n-test", "1", "--out", str(f)])
    assert rc != 0 and "not a folder" in capsys.readouterr().err
    assert f.read_text() == "not a folder"


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for word in ("--n-train", "--n-test", "--out", "--seed", "--workers", "--param", "resum"):
        assert word in text
