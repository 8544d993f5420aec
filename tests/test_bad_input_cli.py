"""Every bad input to the ``femoe`` command line is one clear line and exit status 2, never a
traceback or a silent result (issue 15). Table-driven: command, exit status, a phrase of the
message. The commands run in-process (``femoe.cli.main``); a few run as real processes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import meshio
import numpy as np
import pytest
import skfem

from femoe.cli import main
from femoe.train.config import load_config
from femoe.train.run import run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).resolve().parent / "configs"
MESH = str(ROOT / "meshes" / "plate_with_holes.msh")

# name -> TOML text of a config whose error must surface at load time (before data generation)
BAD_CONFIGS = {
    "results_int": 'results = 7\n[problem]\nname = "poisson_mms"\n',
    "params_string": '[problem]\nname = "poisson_mms"\nparams = "x"\n',
    "partition": '[problem]\nname = "poisson_mms"\n[experts]\npartition = "metsi"\n',
    "device": '[problem]\nname = "poisson_mms"\n[train]\ndevice = "gpu"\n',
    "tol": '[problem]\nname = "poisson_mms"\n[solver]\ntol = -1e-8\n',
    "hessian": '[problem]\nname = "poisson_mms"\n[solver]\nhessian = "newton"\n',
    "rho": '[problem]\nname = "poisson_mms"\n[solver]\nrho = "1e-4"\n',
    "unknown_key": '[problem]\nname = "poisson_mms"\n[train]\nepoch = 3\n',
    "misplaced_key": 'epochs = 3\n[problem]\nname = "poisson_mms"\n',
    "problem_param": '[problem]\nname = "poisson_mms"\nparams = { refine = 2.5 }\n',
    "problem_param_name": '[problem]\nname = "poisson_mms"\nparams = { refin = 2 }\n',
    "problem_name": '[problem]\nname = "poisson"\n',
    "methods": 'methods = ["pihcc"]\n[problem]\nname = "poisson_mms"\n',
    "lr": '[problem]\nname = "poisson_mms"\n[train]\nlr = 0\n',
    "not_toml": "name = [\n",
}

# (id, argv with {placeholders}, exit status, phrase of stderr)
CASES = [
    ("predict-empty", "predict {ck} --input {d}/empty.npy --out {d}/o/p.vtu", 2, "array is empty"),
    ("predict-strings", "predict {ck} --input {d}/strings.npy --out {d}/o/p.vtu", 2, "inputs must be numbers"),
    ("predict-corrupt-npy", "predict {ck} --input {d}/corrupt.npy --out {d}/o/p.vtu", 2, "not a readable .npy"),
    ("predict-fake-h5", "predict {ck} --input {d}/fake.h5 --out {d}/o/p.vtu", 2, "not a readable HDF5"),
    ("predict-h5-no-inputs", "predict {ck} --input {d}/noinputs.h5 --out {d}/o/p.vtu", 2, "no 'inputs' dataset"),
    ("predict-zero-permeability", "predict {ck} --input {d}/zero.npy --out {d}/o/p.vtu", 2, "kappa > 0"),
    ("predict-nan", "predict {ck} --input {d}/nan.npy --out {d}/o/p.vtu", 2, "NaN"),
    ("predict-wrong-length", "predict {ck} --input {d}/short.npy --out {d}/o/p.vtu", 2, "values per sample"),
    ("predict-3d-array", "predict {ck} --input {d}/cube.npy --out {d}/o/p.vtu", 2, "(samples, m)"),
    ("predict-missing-input", "predict {ck} --input {d}/nope.npy --out {d}/o/p.vtu", 2, "no such input file"),
    ("predict-txt-input", "predict {ck} --input {d}/cfg_lr.toml --out {d}/o/p.vtu", 2, ".npy or .h5"),
    ("predict-bad-out-suffix", "predict {ck} --input {d}/good.npy --out {d}/o/p.txt", 2, ".vtu (steady)"),
    ("predict-not-a-checkpoint", "predict {d}/good.npy --input {d}/good.npy --out {d}/o/p.vtu", 2,
     "not a femoe checkpoint"),
    ("predict-missing-checkpoint", "predict {d}/none.pt --input {d}/good.npy --out {d}/o/p.vtu", 2,
     "no such checkpoint"),
    ("partition-negative-seed", "partition {mesh} -k 2 --seed -5", 2, "--seed must be a non-negative"),
    ("partition-zero-k", "partition {mesh} -k 0", 2, "at least 1"),
    ("partition-png-missing-folder", "partition {mesh} -k 2 --png {d}/nodir/x.png", 2, "does not exist"),
    ("partition-nan-mesh", "partition {d}/nan.vtu -k 2", 2, "NaN or infinite coordinates"),
    ("partition-missing-mesh", "partition {d}/none.msh -k 2", 2, "mesh file not found"),
    ("mesh-info-nan-mesh", "mesh info {d}/nan.vtu", 2, "NaN or infinite coordinates"),
    ("mesh-info-not-a-mesh", "mesh info {d}/fake.h5", 2, ""),
    ("solve-negative-seed", "solve poisson_mms --seed -1 --out {d}/s", 2, "--seed must be a non-negative"),
    ("solve-fractional-refine", "solve poisson_mms --param refine=2.5 --out {d}/s", 2, "must be an integer"),
    ("solve-non-boolean-flag", "solve poisson_mms --param nonlinear=maybe --out {d}/s", 2, "not a boolean"),
    ("solve-unknown-param", "solve poisson_mms --param refin=2 --out {d}/s", 2, "did you mean 'refine'"),
    ("solve-param-syntax", "solve poisson_mms --param refine --out {d}/s", 2, "KEY=VALUE"),
    ("solve-unknown-problem", "solve poison --out {d}/s", 2, "Pick one of"),
    ("generate-zero-train", "generate poisson_mms --n-train 0 --n-test 1 --out {d}/g", 2, "n_train"),
    ("generate-negative-seed", "generate poisson_mms --n-train 1 --n-test 1 --out {d}/g --seed -3", 2, "seed"),
    ("generate-zero-workers", "generate poisson_mms --n-train 1 --n-test 1 --out {d}/g --workers 0", 2, "workers"),
    ("run-missing-config", "run {d}/none.toml", 2, "does not exist"),
    ("run-bad-methods-override", "run {smoke} --methods hard --results {d}/r", 2, "methods must be"),
] + [(f"config-{name}", f"run {{d}}/cfg_{name}.toml --results {{d}}/r", 2, phrase) for name, phrase in [
    ("results_int", "results must be a string"),
    ("params_string", "problem.params must be a table"),
    ("partition", "did you mean 'metis'"),
    ("device", "train.device must be"),
    ("tol", "solver.tol must be > 0"),
    ("hessian", "solver.hessian must be one of"),
    ("rho", "solver.rho must be a number"),
    ("unknown_key", "did you mean 'epochs'"),
    ("misplaced_key", "belongs in [train]"),
    ("problem_param", "must be an integer"),
    ("problem_param_name", "did you mean 'refine'"),
    ("problem_name", "did you mean 'poisson_mms'"),
    ("methods", "did you mean 'pihc'"),
    ("lr", "train.lr must be > 0"),
    ("not_toml", "not valid TOML"),
]]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A trained Darcy checkpoint (soft, one step) and a folder of bad inputs."""
    d = tmp_path_factory.mktemp("bad")
    cfg = load_config(CONFIGS / "smoke_darcy_2d.toml")
    cfg.methods, cfg.results, cfg.data.dir = ["soft"], str(d / "results"), str(d / "data")
    cfg.train.max_steps_per_epoch = 1
    run(cfg, progress=False, isolate=False)
    import h5py

    with h5py.File(d / "data" / "test.h5", "r") as f:
        good = f["inputs"][()]
    np.save(d / "good.npy", good)
    np.save(d / "empty.npy", np.zeros((0,)))
    np.save(d / "strings.npy", np.array(["a", "b"]))
    np.save(d / "zero.npy", np.zeros_like(good))
    nan = good.copy()
    nan[0, 5] = np.nan
    np.save(d / "nan.npy", nan)
    np.save(d / "short.npy", good[:, :10])
    np.save(d / "cube.npy", good[None])
    (d / "corrupt.npy").write_bytes(b"\x93NUMPY garbage")
    (d / "fake.h5").write_text("not hdf5")
    with h5py.File(d / "noinputs.h5", "w") as f:
        f["solutions"] = np.zeros(3)
    m = skfem.MeshTri().refined(2)
    p = np.c_[m.p.T, np.zeros(m.nvertices)]
    p[3, 0] = np.nan
    meshio.write(d / "nan.vtu", meshio.Mesh(p, [("triangle", m.t.T)]))
    for name, text in BAD_CONFIGS.items():
        (d / f"cfg_{name}.toml").write_text(text)
    return {"d": str(d), "ck": str(d / "results" / "smoke_darcy_2d" / "soft" / "checkpoint.pt"), "mesh": MESH,
            "smoke": str(CONFIGS / "smoke_poisson_mms.toml")}


@pytest.mark.parametrize("case, argv, status, phrase", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(files, capsys, case, argv, status, phrase):
    before = set(os.listdir(files["d"]))
    assert main(argv.format(**files).split()) == status
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("femoe: error: ")]
    assert len(lines) == 1, err
    assert phrase in lines[0], err
    if case.startswith("config-"):  # refused at load time: no data generated, no results written
        assert set(os.listdir(files["d"])) == before


def test_argparse_errors_exit_2_without_traceback(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["partition", MESH, "-k", "two"])
    assert exc.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_zero_permeability_was_not_written(files, capsys):
    """The refused prediction leaves no output behind (it is refused before predicting)."""
    main(f"predict {files['ck']} --input {files['d']}/zero.npy --out {files['d']}/z/p.vtu".split())
    assert not (Path(files["d"]) / "z").exists()


def test_a_real_process_prints_no_traceback(files):
    """End to end, as a user runs it: one line on stderr, status 2 (the in-process cases above
    go through the same main())."""
    proc = subprocess.run([sys.executable, "-m", "femoe", "run", f"{files['d']}/cfg_results_int.toml"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "results must be a string" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


# ---------------------------------------------------------------- one results folder, one run
def _write_cfg(path: Path, tmp: Path, **train) -> Path:
    text = (CONFIGS / "smoke_poisson_mms.toml").read_text().replace(
        'methods = ["soft", "pihc", "moe", "patch"]', 'methods = ["soft"]')
    for k, v in train.items():
        text, n = re.subn(rf"(?m)^{k} = .*$", f"{k} = {v}", text)
        text += "" if n else f"{k} = {v}\n"
    text = text.replace('name = "smoke_poisson_mms"', f'name = "folder"\nresults = "{tmp}/results"')
    text = text.replace("[data]\n", f'[data]\ndir = "{tmp}/data"\n')
    path.write_text(text)
    return path


def test_fresh_run_resume_and_overwrite(tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "a.toml", tmp_path)
    run_dir = tmp_path / "results" / "folder"
    assert main(["run", str(cfg), "--in-process", "--no-progress"]) == 0
    log = run_dir / "soft" / "log.jsonl"
    n_lines = len(log.read_text().splitlines())
    metrics = (run_dir / "metrics.json").read_text()
    assert n_lines == 2 and json.loads(metrics)["methods"]["soft"]["steps"] == 2
    capsys.readouterr()

    # a fresh run over it is refused, and the old log is not touched
    assert main(["run", str(cfg), "--in-process", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert len(log.read_text().splitlines()) == n_lines

    # resume with changed settings: refused, naming the keys; metrics.json untouched
    for key, value, phrase in [("lr", "0.01", "train.lr: 0.001 -> 0.01"), ("batch_size", "1", "train.batch_size"),
                               ("epochs", "3", "train.epochs")]:
        changed = _write_cfg(tmp_path / "a.toml", tmp_path, **{key: value})
        assert main(["run", str(changed), "--resume", "--in-process", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert phrase in err and "Traceback" not in err, err
    wide = tmp_path / "b.toml"
    wide.write_text(_write_cfg(tmp_path / "a.toml", tmp_path).read_text().replace("width = 8", "width = 12"))
    assert main(["run", str(wide), "--resume", "--in-process", "--no-progress"]) == 2
    assert "network.width: 8 -> 12" in capsys.readouterr().err
    assert (run_dir / "metrics.json").read_text() == metrics

    # resume with the same config: allowed (already finished: no new steps, the log kept)
    cfg = _write_cfg(tmp_path / "a.toml", tmp_path)
    assert main(["run", str(cfg), "--resume", "--in-process", "--no-progress"]) == 0
    assert len(log.read_text().splitlines()) == n_lines

    # --overwrite starts afresh: a log of this run only
    assert main(["run", str(cfg), "--overwrite", "--in-process", "--no-progress"]) == 0
    assert len(log.read_text().splitlines()) == n_lines
    assert main(["run", str(cfg), "--overwrite", "--resume"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_metrics_json_is_never_replaced_by_one_without_methods(tmp_path):
    from femoe.train.config import Config
    from femoe.train.run import _write_metrics

    cfg = Config()
    path = tmp_path / "metrics.json"
    old = {"config": cfg.to_dict(), "methods": {"soft": {"rel_l2_mean": 0.5}}, "errors": {}}
    path.write_text(json.dumps(old))
    _write_metrics(path, {"config": cfg.to_dict(), "methods": {}, "errors": {"pihc": "boom"}}, cfg)
    assert json.loads(path.read_text())["methods"] == old["methods"]  # kept, the failure recorded
    assert json.loads(path.read_text())["errors"] == {"pihc": "boom"}
    other = cfg.to_dict()
    other["train"]["lr"] = 0.5  # an earlier run of another config is not merged, nor emptied
    _write_metrics(path, {"config": other, "methods": {}, "errors": {"pihc": "boom"}}, Config(**{
        **cfg.__dict__, "train": type(cfg.train)(**{**cfg.train.__dict__, "lr": 0.5})}))
    assert json.loads(path.read_text())["methods"] == old["methods"]
    _write_metrics(tmp_path / "none.json", {"config": other, "methods": {}, "errors": {"pihc": "x"}}, cfg)
    assert not (tmp_path / "none.json").exists()
    # a later method of the same config is added beside the earlier one
    _write_metrics(path, {"config": cfg.to_dict(), "methods": {"pihc": {"rel_l2_mean": 0.1}}, "errors": {}}, cfg)
    assert sorted(json.loads(path.read_text())["methods"]) == ["pihc", "soft"]


def test_every_config_key_has_a_checked_type_and_a_valid_default():
    import dataclasses

    from femoe.train.config import _SECTIONS, _TYPES, Config, _check_value

    cfg = Config()
    for key, cls in (("config", Config), *_SECTIONS.items()):
        obj = cfg if key == "config" else getattr(cfg, key)
        for f in dataclasses.fields(cls):
            if key == "config" and f.name in _SECTIONS:
                continue
            assert str(f.type) in _TYPES, f"{key}.{f.name}"
            _check_value(key, f.name, getattr(obj, f.name), str(f.type))


def test_config_changes_names_keys_but_not_the_ones_a_resume_may_change():
    from femoe.train.config import Config, config_changes

    a = Config().to_dict()
    b = Config().to_dict()
    b.update(name="other", methods=["soft"], results="elsewhere")
    b["train"]["device"] = "cuda"
    b["data"]["test_params"] = {"grid": 32}  # evaluation only: a resumed run may add a test mesh
    b["data"]["test_network_mesh"] = "train"
    assert config_changes(a, b) == []
    b["train"]["lr"] = 0.5
    b["network"]["width"] = 3
    assert config_changes(a, b) == ["network.width", "train.lr"]
    del a["train"]["schedule"]  # a checkpoint of a femoe without this key: its default is no change
    assert config_changes(a, b) == ["network.width", "train.lr"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_refused_before_data_generation(tmp_path, capsys):
    cfg = tmp_path / "cuda.toml"
    cfg.write_text(f'[problem]\nname = "poisson_mms"\n[data]\ndir = "{tmp_path}/data"\n[train]\ndevice = "cuda"\n')
    assert main(["run", str(cfg), "--results", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "data").exists() and not (tmp_path / "r").exists()
