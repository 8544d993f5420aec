"""The problem registry: names, errors, parameter validation, the common spec interface."""

import numpy as np
import pytest

from femoe.errors import ConfigError, ParameterError
from femoe.problem import Problem
from femoe.problems import PROBLEMS, ProblemSpec, get_problem


def test_registry_lists_the_four_problems():
    assert set(PROBLEMS) == {"diffusion_sorption_1d", "navier_stokes_2d", "darcy_2d", "poisson_mms"}
    for name in PROBLEMS:
        spec = get_problem(name)
        assert isinstance(spec, ProblemSpec) and spec.name == name
        assert spec.__class__.__module__.startswith("femoe.problems.")
        assert "PDE" in __import__(spec.__class__.__module__, fromlist=["x"]).__doc__


def test_unknown_problem_lists_valid_names():
    with pytest.raises(ConfigError) as exc:
        get_problem("burgers")
    for name in PROBLEMS:
        assert name in str(exc.value)


@pytest.mark.parametrize("name,overrides,word", [
    ("diffusion_sorption_1d", {"phi": 1.2}, "phi"),
    ("diffusion_sorption_1d", {"phi": 0.0}, "phi"),
    ("diffusion_sorption_1d", {"D": -5e-4}, "D"),
    ("diffusion_sorption_1d", {"eps": 0.0}, "eps"),
    ("diffusion_sorption_1d", {"ic": "sawtooth"}, "ic"),
    ("navier_stokes_2d", {"nu": -1.0}, "nu"),
    ("navier_stokes_2d", {"n_steps": 0}, "n_steps"),
    ("darcy_2d", {"kappa_low": 0.0}, "kappa_low"),
    ("darcy_2d", {"field": "three_phase"}, "field"),
    ("poisson_mms", {"order": 3}, "order"),
])
def test_parameters_outside_their_range_are_rejected(name, overrides, word):
    with pytest.raises(ParameterError) as exc:
        get_problem(name).build(**overrides)
    assert word in str(exc.value) and "expected" in str(exc.value)


def test_unknown_and_mistyped_parameters_are_rejected():
    spec = get_problem("diffusion_sorption_1d")
    with pytest.raises(ParameterError, match="valid parameters"):
        spec.parameters(diffusivity=1.0)
    with pytest.raises(ParameterError, match="float"):
        spec.parameters(D="fast")


def test_parameters_do_not_change_the_defaults():
    spec = get_problem("darcy_2d")
    before = spec.defaults
    spec.parameters(f=2.0)
    assert spec.defaults == before


@pytest.mark.parametrize("name,overrides", [
    ("darcy_2d", {}),
    ("poisson_mms", {"refine": 2}),
    ("diffusion_sorption_1d", {"n_cells": 32, "T": 10.0, "n_saved": 3, "substeps": 8, "grading": 2}),
    ("navier_stokes_2d", {"T": 0.1, "n_steps": 2}),
])
def test_spec_interface(name, overrides):
    spec = get_problem(name)
    problem = spec.build(**overrides)
    assert isinstance(problem, Problem)
    assert problem.config == spec.parameters(**overrides)
    assert problem.is_time_dependent == (not spec.steady)
    x = spec.sample_inputs(np.random.default_rng(3), 2, problem)
    y = spec.sample_inputs(np.random.default_rng(3), 2, problem)
    np.testing.assert_array_equal(x, y)
    assert x.shape[0] == 2 and not np.array_equal(x[0], x[1])
    times, u = spec.reference(problem, x[0])
    assert np.all(np.isfinite(u))
    if spec.steady:
        assert times is None and u.shape == (problem.n,)
    else:
        assert u.shape == (times.size, problem.n) and times[0] == 0.0
        assert np.isclose(times[-1], problem.config["T"])
    assert spec.points(problem).shape == (problem.n, problem.mesh.dim())


def test_a_regular_install_ships_the_bundled_meshes_and_configs():
    """A non-editable ``pip install .`` has no repository beside it: every mesh file a bundled
    problem reads (``femoe.meshes.MESH_DIR``) and every bundled config must be package data of
    ``femoe.meshes`` / ``femoe.problems`` (pyproject's packages, package-dir and package-data), or
    ``femoe solve``/``femoe run`` fail there."""
    import fnmatch
    import sys
    from pathlib import Path

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    import femoe.problems
    from femoe.meshes import MESH_DIR

    root = Path(__file__).resolve().parents[1]
    st = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages, package_dir, data = st["packages"], st["package-dir"], st["package-data"]
    assert MESH_DIR.resolve() == (root / "meshes").resolve()
    assert femoe.problems.CONFIG_DIR.resolve() == (root / "problems" / "configs").resolve()
    for pkg, folder, pattern in (("femoe.meshes", root / "meshes", "*.msh"),
                                 ("femoe.problems", root / "problems", "configs/*.toml")):
        assert (folder / "__init__.py").is_file(), f"{folder} must be a package to be installed"
        assert pkg in packages, f"{pkg} is not in tool.setuptools.packages"
        assert (root / package_dir[pkg]).resolve() == folder.resolve(), f"package-dir does not map {pkg} to {folder}"
        files = sorted(folder.glob(pattern))
        assert files
        for f in files:
            rel = f.relative_to(folder).as_posix()
            assert any(fnmatch.fnmatch(rel, p) for p in data.get(pkg, [])), f"{rel} is not package data of {pkg}"
    # no top-level package of those names is installed beside femoe
    assert not {"problems", "meshes"} & {p.split(".")[0] for p in packages}
    # the files the bundled problems read by default are among them
    for name in ("plate_with_holes.msh", "periodic_square.msh"):
        assert (MESH_DIR / name).is_file()
