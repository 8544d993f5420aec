"""The interface every problem module implements (:class:`ProblemSpec`) and shared helpers."""

from __future__ import annotations

import difflib
import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from femoe.errors import ParameterError
from femoe.problem import Problem


@dataclass(frozen=True)
class Param:
    """A problem parameter: default value, a check of its range, and what the check means.

    ``check`` returns True for valid values; ``valid`` is the human-readable range used in
    error messages, e.g. ``"> 0"`` or ``"in (0, 1)"``.
    """

    default: Any
    check: Callable[[Any], bool] | None = None
    valid: str = ""
    help: str = ""
    kind: type = float


def positive(x: float) -> bool:
    return bool(math.isfinite(x) and x > 0)


def nonnegative(x: float) -> bool:
    return bool(math.isfinite(x) and x >= 0)


def open_unit(x: float) -> bool:
    return bool(0 < x < 1)


def positive_int(x: int) -> bool:
    return int(x) == x and x >= 1


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _coerce(kind: Any, value: Any) -> Any:
    """``kind(value)``, refusing what the cast would silently change: a fraction given for an
    integer (``refine=2.5`` is not 2) and booleans for numbers."""
    if kind in (int, float) and isinstance(value, bool):
        raise TypeError("a boolean is not a number")
    if kind is int:
        if isinstance(value, str):
            value = float(value)
        if isinstance(value, float) and not value.is_integer():
            raise ValueError("not an integer")
    return kind(value)


class ProblemSpec(ABC):
    """One benchmark problem: its parameters, discrete problem, inputs and reference solver.

    Subclasses set :attr:`name`, :attr:`steady`, :attr:`element`, :attr:`mesh_file` and
    :attr:`params` and implement :meth:`_build`, :meth:`sample_inputs` and :meth:`reference`.

    The parameters a :class:`~femoe.problem.Problem` was built with are attached to it as
    ``problem.config`` (a plain dict), which :meth:`reference` reads.
    """

    name: str = ""
    steady: bool = True
    element: str = ""
    mesh_file: str | None = None
    params: Mapping[str, Param] = {}
    description: str = ""
    #: steady problems: the parameter the per-sample input is passed to the constraint layers as
    input_param: str = "kappa"
    #: valid input values: ``(check of one value, "what it must be")``, or None for any finite value
    input_range: tuple[Callable[[float], bool], str] | None = None

    # ------------------------------------------------------------------ parameters
    @property
    def defaults(self) -> dict[str, Any]:
        """Default parameter values (a fresh dict)."""
        return {k: p.default for k, p in self.params.items()}

    def parameters(self, **overrides: Any) -> dict[str, Any]:
        """Defaults merged with ``overrides``, each validated.

        Raises
        ------
        femoe.errors.ParameterError
            An unknown name, a value of the wrong type, or a value outside its range.
        """
        unknown = sorted(set(overrides) - set(self.params))
        if unknown:
            near = difflib.get_close_matches(unknown[0], list(self.params), n=1, cutoff=0.6)
            raise ParameterError(
                f"problem {self.name!r} has no parameter(s) {unknown}"
                + (f" (did you mean {near[0]!r}?)" if near else "")
                + f"; valid parameters: {sorted(self.params)}"
            )
        out = self.defaults
        for key, value in overrides.items():
            spec = self.params[key]
            try:
                value = _coerce(spec.kind, value)
            except (TypeError, ValueError, OverflowError) as exc:
                what = (f"must be {_KIND_NAMES[spec.kind]} ({spec.kind.__name__})" if spec.kind in _KIND_NAMES
                        else f"is not valid ({exc})")
                raise ParameterError(f"problem {self.name!r}: parameter {key!r} {what}; got {value!r}") from None
            out[key] = value
        for key, value in out.items():
            spec = self.params[key]
            if spec.check is not None and not spec.check(value):
                raise ParameterError(
                    f"problem {self.name!r}: parameter {key}={value!r} is outside its physical "
                    f"range; expected {key} {spec.valid}" + (f" ({spec.help})" if spec.help else "")
                )
        self._check_combination(out)
        return out

    def _check_combination(self, params: dict[str, Any]) -> None:
        """Checks that involve several parameters (override where needed)."""

    # ------------------------------------------------------------------ the problem
    def build(self, **overrides: Any) -> Problem:
        """The discrete :class:`~femoe.problem.Problem` (mesh, basis, integrands, BCs).

        ``overrides`` replace default parameters (see :attr:`params`); they are validated.
        """
        params = self.parameters(**overrides)
        problem = self._build(params)
        problem.config = dict(params)
        return problem

    @abstractmethod
    def _build(self, params: dict[str, Any]) -> Problem:
        """Build the problem from validated parameters."""

    @abstractmethod
    def sample_inputs(self, rng: np.random.Generator, n: int, problem: Problem | None = None) -> np.ndarray:
        """``n`` random inputs (initial conditions or coefficient fields), shape ``(n, m)``."""

    @abstractmethod
    def reference(self, problem: Problem, sample: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        """Reference solution for one input: ``(times, U)`` with ``U`` of shape ``(T, n)``
        (``times`` of shape ``(T,)``), or ``(None, u)`` with ``u`` of shape ``(n,)`` for
        steady problems."""

    def reference_batch(self, problem: Problem, samples: np.ndarray,
                        sample_ids=None) -> tuple[np.ndarray | None, np.ndarray]:
        """Reference solutions of several inputs ``samples`` ``(b, m)``: ``(times, U)`` with ``U``
        of shape ``(b, T, n)`` (``(b, n)`` for steady problems). ``sample_ids`` name the samples
        in errors. This default solves them one at a time with :meth:`reference`; problems with a
        batched solver override it. Either way a sample's result must not depend on which other
        samples share the batch (``femoe generate`` relies on it)."""
        times, out = None, []
        for x in np.asarray(samples):
            times, u = self.reference(problem, x)
            out.append(np.asarray(u, dtype=np.float64))
        return times, np.stack(out)

    # ------------------------------------------------------------------ helpers
    def check_inputs(self, inputs: np.ndarray) -> None:
        """Refuse inputs ``(samples, m)`` outside :attr:`input_range` (e.g. a permeability <= 0),
        naming the first bad value."""
        if self.input_range is None:
            return
        check, what = self.input_range
        x = np.asarray(inputs, dtype=float)
        ok = np.vectorize(lambda v: bool(check(float(v))), otypes=[bool])(x) if x.size else np.ones(0, bool)
        if not ok.all():
            where = tuple(int(i) for i in np.argwhere(~ok)[0])
            raise ParameterError(
                f"problem {self.name!r}: {int((~ok).sum())} input value(s) outside the valid range "
                f"({self.input_param} {what}); first: {float(x[where]):g} at index {where}. Give inputs in "
                "that range (as the training data were)")

    def layer_params(self, problem: Problem, inputs):
        """Steady problems: the ``params`` of the constraint layers for a batch of inputs
        ``(batch, m)`` (a torch tensor): ``{input_param: inputs}``. A one-value input is a
        per-sample constant, passed as ``(batch,)`` (declare it ``"constant"`` in the
        Problem's ``coefficients``, or a batch of ``n`` samples would read as a nodal field)."""
        if inputs.shape[-1] == 1:
            return {self.input_param: inputs[..., 0]}
        return {self.input_param: inputs}

    def initial_state(self, problem: Problem, inputs: np.ndarray) -> np.ndarray:
        """Full initial DOF vectors ``(samples, n)`` of time-dependent problems from their inputs
        (the inputs themselves unless a problem's inputs are only part of the state)."""
        inputs = np.atleast_2d(inputs)
        if inputs.shape[1] != problem.n:
            raise ParameterError(f"problem {self.name!r}: inputs of {inputs.shape[1]} values are not initial "
                                 f"states of {problem.n} DOFs")
        return inputs

    def algebraic_fields(self, problem: Problem):
        """The problem's fields fixed by a linear algebraic equation of the others, as a
        :class:`femoe.layers.AlgebraicFields`, or None (the default: every field is evolved).
        With ``network.solve_algebraic = true`` the training task computes them from the
        network's other fields instead of spanning them (see :class:`~femoe.layers.AlgebraicFields`)."""
        return None

    def tendencies(self, problem: Problem, states: np.ndarray, m: int) -> np.ndarray:
        """``m`` Krylov tendencies at each state ``(batch, n)`` (full DOF vectors), ``(batch, m,
        n)``: ``f_1`` the semi-discrete right-hand side at ``u`` (``u' = f(u)``), ``f_{k+1}`` its
        Jacobian at ``u`` times ``f_k``, each a full state (derived fields included). At the initial
        state they span the Taylor polynomial of the trajectory at ``t = 0``;
        ``network.tendencies = m`` adds them to the basis. Trajectory problems that can evaluate
        ``f`` implement this; the default refuses."""
        from femoe.errors import ConfigError

        raise ConfigError(f"problem {self.name!r} does not provide tendencies of its initial state; set "
                          "network.tendencies = 0")

    def points(self, problem: Problem) -> np.ndarray:
        """DOF coordinates ``(n, dim)`` of the solution vector."""
        return np.ascontiguousarray(problem.doflocs.T)

    def output_fields(self, problem: Problem, u: np.ndarray) -> dict[str, np.ndarray]:
        """Name -> nodal values on ``problem.mesh`` vertices for plots and VTU output (the last
        axis of ``u`` is the DOF axis)."""
        return {"u": np.asarray(u)[..., : problem.mesh.nvertices]}

    def output_mesh(self, problem: Problem):
        """The (non-periodic) mesh that :meth:`output_fields` values live on."""
        return problem.mesh

    def metadata(self, problem: Problem) -> dict[str, Any]:
        """What the data files record about the problem."""
        return {
            "problem": self.name,
            "mesh_file": self.mesh_file or f"(built in by femoe.problems.{self.name}; see its docstring)",
            "element": self.element,
            "parameters": json.dumps(problem.config, sort_keys=True),
            "steady": self.steady,
        }
