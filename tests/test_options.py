"""The layers' solver keywords are one set of defaults, not copies that drift apart: PI-HC and
PI-HC-MoE share LMOptions' defaults, and every Newton solve (nonlinear_solve, nonlinear_step,
patch mode) shares NewtonOptions'."""

import dataclasses
import inspect

import pytest

from femoe.experts import HardConstraintMoE, PatchConstraint
from femoe.layers import HardConstraint, LMOptions, NewtonOptions, nonlinear_solve, nonlinear_step


def _defaults(f) -> dict:
    return {k: p.default for k, p in inspect.signature(f).parameters.items() if p.default is not inspect.Parameter.empty}


def _fields(cls) -> dict:
    out = {}
    for f in dataclasses.fields(cls):
        out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else f.default
    return out


def test_pihc_and_the_moe_share_the_least_squares_defaults():
    lm = {k: (v.value if hasattr(v, "value") else v) for k, v in _fields(LMOptions).items()}
    a, b = _defaults(HardConstraint.__init__), _defaults(HardConstraintMoE.__init__)
    shared = set(a) & set(b)
    assert {"rho", "tol", "atol", "maxiter", "damping", "hessian", "backward", "row_scale", "unconverged",
            "patience", "strict", "ic_weight", "t0", "dt"} <= shared
    for k in shared:
        assert a[k] == b[k], k
    for k, v in lm.items():
        assert a[k] == v, k


@pytest.mark.parametrize("solve", [nonlinear_solve, nonlinear_step, PatchConstraint.__init__])
def test_every_newton_solve_shares_the_newton_defaults(solve):
    want = _fields(NewtonOptions)
    have = _defaults(solve)
    for k in ("atol", "rtol", "maxiter", "linear_solver", "line_search"):
        assert have[k] == want[k], (solve.__qualname__, k)
