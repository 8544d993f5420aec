"""Benchmark problems: a registry of name -> :class:`~problems._base.ProblemSpec`.

>>> from problems import get_problem, PROBLEMS
>>> spec = get_problem("darcy_2d")            # doctest: +SKIP
>>> problem = spec.build()                    # a femoe.problem.Problem
>>> kappa = spec.sample_inputs(np.random.default_rng(0), 4, problem)
>>> times, u = spec.reference(problem, kappa[0])   # times is None for steady problems

Each problem lives in its own module whose docstring states the PDE, weak form, boundary and
initial conditions, parameters and provenance.
"""

from __future__ import annotations

import importlib

from femoe.errors import ConfigError
from problems._base import Param, ProblemSpec

__all__ = ["PROBLEMS", "Param", "ProblemSpec", "get_problem"]

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
    return importlib.import_module(f"problems.{name}").SPEC
