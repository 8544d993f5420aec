"""Benchmark problems: a registry of name -> :class:`ProblemSpec`.

>>> from femoe.problems import get_problem, PROBLEMS
>>> spec = get_problem("darcy_2d")            # doctest: +SKIP
>>> problem = spec.build()                    # a femoe.problem.Problem
>>> kappa = spec.sample_inputs(np.random.default_rng(0), 4, problem)
>>> times, u = spec.reference(problem, kappa[0])   # times is None for steady problems

Each problem lives in its own module whose docstring states the PDE, weak form, boundary and
initial conditions, parameters and provenance. :data:`CONFIG_DIR` holds the bundled run
configurations (``femoe run`` reads ``default.toml`` there); the meshes the problems read are in
:mod:`femoe.meshes`.

The repository keeps this package at its top level (``problems/``); it is installed as
``femoe.problems`` (pyproject's ``package-dir``), with the configs as package data.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from femoe.errors import ConfigError
from femoe.problems._base import Param, ProblemSpec

__all__ = ["CONFIG_DIR", "PROBLEMS", "Param", "ProblemSpec", "get_problem"]

#: the bundled run configurations (``*.toml``, package data)
CONFIG_DIR: Path = Path(__file__).resolve().parent / "configs"

#: registered problem names, in the order the CLI lists them
PROBLEMS: tuple[str, ...] = ("darcy_2d", "diffusion_sorption_1d", "navier_stokes_2d", "poisson_mms")


def get_problem(name: str) -> ProblemSpec:
    """The :class:`ProblemSpec` registered as ``name``.

    Raises
    ------
    femoe.errors.ConfigError
        ``name`` is not a registered problem (the message lists the valid names).
    """
    if name not in PROBLEMS:
        raise ConfigError(f"unknown problem {name!r}. Pick one of {list(PROBLEMS)}.")
    return importlib.import_module(f"{__name__}.{name}").SPEC
