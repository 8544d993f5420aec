"""Levenberg-Marquardt stopping and the trustworthiness of the implicit gradient.

Every (sample, expert) stops on its own scale and is frozen; a stalled one (a kink of the
residual) stops in a few iterations instead of holding the batch to maxiter; the round-off floor
lets a badly scaled problem converge; the float32 defaults converge; the unconverged policy
(flag / exclude / raise) is the same for PI-HC and PI-HC-MoE; the info record says how far the
backward can be trusted.
"""

import warnings

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError, ConvergenceError, ConvergenceWarning
from femoe.experts import HardConstraintMoE
from femoe.layers import HardConstraint, LMOptions
from femoe.reference import solve

F64 = torch.float64


def test_a_stalled_expert_stops_early_and_is_flagged(make_diffusion_sorption):
    """The sorption term max(u, 0)^n_f has a kink at u = 0; expert 1's optimum sits on it, so
    ||grad f|| cannot vanish. It used to run 80 iterations (until the damping overflowed);
    now it stops after `patience` (20) iterations without progress, flagged, and the other experts
    stop at their own convergence."""
    problem = make_diffusion_sorption(n_cells=6, n_saved=3, theta=0.5)  # Crank-Nicolson
    layer = HardConstraintMoE(problem, 3, partition="slab", dt=5.0)
    g = torch.Generator().manual_seed(4)
    B = 0.1 * torch.randn(1, 3, problem.n, 3, dtype=F64, generator=g)
    u0 = 0.05 + 0.1 * torch.rand(1, problem.n, dtype=F64, generator=g)
    with pytest.warns(ConvergenceWarning, match="stalled"):
        _, info = layer(B, u0=u0)
    assert info.converged.tolist() == [[True, False, True]]
    assert info.stalled.tolist() == [[False, True, False]]
    assert int(info.iterations[0, 1]) <= 40  # was 80
    assert int(info.iterations[0, 0]) <= 8 and int(info.iterations[0, 2]) <= 8
    assert float(info.relative_gradient[0, 1]) > 1e-6  # really not at an optimum


def test_badly_scaled_basis_converges_on_the_roundoff_floor(make_square):
    """Columns u* + s z and s z (s = 1e5): the field is a cancellation of terms 1e5 times its
    size, so ||grad f|| cannot fall below ~eps ||J||^2 ||w||, above 1e-10 ||grad f(0)||. The
    relative test alone ran such experts to maxiter; the floor stops them once they stop
    improving, converged, with the weights as accurate as the conditioning allows."""
    problem = make_square("nonlinear", 3, f=10.0)
    exact = torch.tensor(solve(problem)[0])
    g = torch.Generator().manual_seed(0)
    z = torch.randn(problem.n, 2, dtype=F64, generator=g)
    z = torch.randn(problem.n, 2, dtype=F64, generator=g)  # the second draw of the measured case
    B = torch.stack([exact + 1e5 * z[:, 0], 1e5 * z[:, 0], z[:, 1]], -1)[None]
    layer = HardConstraintMoE(problem, 3, partition="rcb", rho=0.0, maxiter=50)
    u, info = layer(B)
    assert info.all_converged
    assert int(info.iterations.max()) <= 35
    assert bool((info.relative_gradient > 1e-10).any())  # converged on the floor, not the relative test
    torch.testing.assert_close(u[0], exact, rtol=0, atol=1e-6)


def test_float32_defaults_converge_and_match_pihc(make_square):
    problem = make_square("nonlinear", 2, f=1.0)
    moe, pihc = HardConstraintMoE(problem, 3, partition="rcb"), HardConstraint(problem)
    assert moe.options == pihc.options  # same defaults, same stopping test
    g = torch.Generator().manual_seed(1)
    B = torch.randn(2, problem.n, 4, dtype=F64, generator=g).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        _, info = moe(B)
        _, info1 = pihc(B)
    assert info.all_converged and info1.all_converged
    assert int(info.iterations.max()) <= 15 and int(info1.iterations.max()) <= 15


def _make(kind, problem, **kw):
    if kind == "pihc":
        return HardConstraint(problem, **kw)
    return HardConstraintMoE(problem, 2, partition="rcb", **kw)


@pytest.mark.parametrize("kind", ["pihc", "moe"])
def test_strict_and_raise_policy_raise(kind, make_square):
    problem = make_square("nonlinear", 2, f=10.0)
    B = torch.randn(1, problem.n, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    for kw in ({"strict": True}, {"unconverged": "raise"}):
        with pytest.raises(ConvergenceError, match="did not converge"):
            _make(kind, problem, maxiter=1, **kw)(B)


@pytest.mark.parametrize("kind", ["pihc", "moe"])
@pytest.mark.parametrize("kw, match", [({"unconverged": "ignore"}, "unconverged"),
                                       ({"unconverged": "exclude", "strict": True}, "strict"),
                                       ({"patience": 0}, "patience")])
def test_bad_policy_options(kind, kw, match, make_square):
    with pytest.raises(ConfigError, match=match):
        _make(kind, make_square("nonlinear", 2, f=10.0), **kw)


@pytest.mark.parametrize("kind", ["pihc", "moe"])
def test_exclude_gives_unconverged_samples_no_gradient(kind, make_square):
    """Sample 0 (f = 0.01, nearly linear) converges in 3 iterations, sample 1 (f = 60) does not:
    with "exclude" sample 1 keeps its value but gives no gradient, sample 0's gradient is the
    "flag" one."""
    problem = make_square("nonlinear", 2, f=10.0)
    g = torch.Generator().manual_seed(3)
    B = torch.randn(2, problem.n, 3, dtype=F64, generator=g)
    f = torch.tensor([0.01, 60.0], dtype=F64)
    out = {}
    for policy in ("flag", "exclude"):
        Bl = B.clone().requires_grad_(True)
        layer = _make(kind, problem, maxiter=3, unconverged=policy)
        with pytest.warns(ConvergenceWarning):
            u, info = layer(Bl, {"f": f})
        conv = info.converged.reshape(2, -1).all(1)
        assert conv.tolist() == [True, False]
        u.square().sum().backward()
        out[policy] = (u.detach(), Bl.grad)
    torch.testing.assert_close(out["exclude"][0], out["flag"][0], rtol=0, atol=0)
    assert float(out["flag"][1][1].abs().max()) > 0
    assert float(out["exclude"][1][1].abs().max()) == 0
    torch.testing.assert_close(out["exclude"][1][0], out["flag"][1][0], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["pihc", "moe"])
def test_info_measures_the_trust_in_the_backward(kind, make_square):
    problem = make_square("nonlinear", 2, f=10.0)
    B = torch.randn(2, problem.n, 3, dtype=F64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    layer = _make(kind, problem)
    u, info = layer(B)
    assert info.all_converged
    lm = [info] if kind == "pihc" else list(info.lm)
    assert all(bool(torch.isnan(i.adjoint_residual).all()) for i in lm)  # no backward yet
    assert float(info.weight_error.max()) < 1e-8
    u.sum().backward()
    adj = info.adjoint_residual
    assert adj.shape == ((2,) if kind == "pihc" else (2, 2))
    assert bool(torch.isfinite(adj).all()) and float(adj.max()) < 1e-10
    # an unconverged solve says so: its estimated weight error is large
    with pytest.warns(ConvergenceWarning):
        _, bad = _make(kind, problem, maxiter=1)(B.detach())
    assert float(bad.weight_error.max()) > 1e-4


def test_lm_options_patience_validated():
    with pytest.raises(ConfigError, match="patience"):
        LMOptions(patience=0)
    assert LMOptions().relative_tolerance(torch.float32) == 1e-5
    assert np.isclose(LMOptions().relative_tolerance(torch.float64), 1e-10)
