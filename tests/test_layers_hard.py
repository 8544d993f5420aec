"""PI-HC (HardConstraint): forward optimality, implicit gradients (gradcheck, unrolled, exact
Hessian), row/DOF selection, time-dependent problems, and errors that are never silent."""

import warnings

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.errors import ConfigError, ConvergenceError, ConvergenceWarning, NonFiniteError, ShapeError
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint, nonlinear_solve
from femoe.problem import Problem
from skfem.helpers import dot as sk_dot

F64 = torch.float64
BC = {"left": 0.0, "right": "g", "top": 0.0, "bottom": 0.0}


@pytest.fixture
def square(make_square):
    """``square(form, refine=1)``: "poisson" (-lap u = f) or "nonlinear" (-div((1 + u^2) grad u) = f)
    on the unit square with the Dirichlet data BC (g = 0 unless given)."""
    return lambda form, refine=1: make_square(form, refine, dirichlet=BC, g=0.0)


@pytest.fixture
def heat(make_heat):
    """u_t = div((D + u^2) grad u) + 1, D = 0.2, Crank-Nicolson, u = 0 on "left", 4 cells."""
    return make_heat(lambda u, v, w: dot((w.D + u**2) * grad(u), grad(v)) - v, 2, theta=0.5,
                     dirichlet={"left": 0.0}, D=0.2)


def _basis(batch, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g, dtype=F64)


def _grad_w_norm(layer, B, params, w):
    """||grad_w f|| recomputed independently with autograd."""
    w = w.detach().requires_grad_(True)
    r = layer.model.residual(torch.einsum("bnk,bk->bn", B, w), params)
    f = 0.5 * (r**2).sum() + 0.5 * layer.options.rho * (w**2).sum()
    return torch.autograd.grad(f, w)[0].norm(dim=1)


@pytest.mark.parametrize("form", ["poisson", "nonlinear"])
def test_forward_reaches_a_stationary_point_and_batches(form, square):
    pb = square(form, 2)
    layer = HardConstraint(pb)
    B = _basis(3, (pb.n, 5))
    f = torch.tensor([1.0, 4.0, 9.0], dtype=F64)
    u, info = layer(B, {"f": f})
    assert u.shape == (3, pb.n) and info.all_converged
    w = torch.linalg.lstsq(B, u.unsqueeze(-1)).solution.squeeze(-1)
    assert (_grad_w_norm(layer, B, {"f": f}, w) <= 1e-9 * info.initial_gradient_norms).all()
    for i in range(3):
        ui, _ = layer(B[i], {"f": float(f[i])})
        torch.testing.assert_close(ui, u[i], atol=1e-10, rtol=0)


@pytest.mark.parametrize("form", ["poisson", "nonlinear"])
def test_exact_solution_in_span_is_recovered(form, square):
    pb = square(form, 3)
    f = torch.tensor([10.0, 20.0], dtype=F64)
    g = torch.tensor([0.5, -0.3], dtype=F64)
    ustar = nonlinear_solve(pb, {"f": f, "g": g}, atol=1e-13, rtol=0)
    B = _basis(2, (pb.n, 6))
    B[:, :, 2] = 3.0 * ustar
    u, info = HardConstraint(pb, rho=0.0, tol=1e-12)(B, {"f": f, "g": g})
    torch.testing.assert_close(u, ustar, atol=1e-9, rtol=0)
    u_ridge, _ = HardConstraint(pb)(B, {"f": f, "g": g})  # rho = 1e-4 biases w by O(rho)
    err = (u_ridge - ustar).norm(dim=1) / ustar.norm(dim=1)
    assert (err < 1e-3).all() and (err > 0).all()


def _gradcheck_layer(layer, B, params, fast_mode=False):
    names = list(params)

    def fn(B, *vals):
        u, info = layer(B, dict(zip(names, vals)))
        assert info.all_converged
        return u

    return torch.autograd.gradcheck(fn, (B, *params.values()), fast_mode=fast_mode)


def test_gradcheck_linear_wrt_basis_and_params(square):
    pb = square("poisson", 1)
    layer = HardConstraint(pb, tol=1e-14)
    B = _basis(2, (pb.n, 3)).requires_grad_(True)
    params = {"f": torch.tensor([2.0, 3.0], dtype=F64, requires_grad=True),
              "g": torch.tensor([0.5, -0.5], dtype=F64, requires_grad=True)}
    assert _gradcheck_layer(layer, B, params)


def test_gradcheck_nonlinear_wrt_basis_and_source_field(square):
    pb = square("nonlinear", 1)
    layer = HardConstraint(pb, tol=1e-14)
    B = _basis(2, (pb.n, 3), seed=1).requires_grad_(True)
    f = torch.tensor(np.random.default_rng(0).uniform(2, 6, (2, pb.n)), dtype=F64, requires_grad=True)
    assert _gradcheck_layer(layer, B, {"f": f}, fast_mode=True)


def test_gradcheck_time_dependent_wrt_basis_initial_condition_and_param(heat):
    pb = heat
    layer = HardConstraint(pb, dt=0.1, tol=1e-14)
    B = (0.5 * _basis(1, (3, pb.n, 3), seed=2)).requires_grad_(True)
    x = torch.as_tensor(pb.doflocs[0])
    u0 = (1.0 + x * (2 - x)).unsqueeze(0).requires_grad_(True)
    D = torch.tensor(0.2, dtype=F64, requires_grad=True)

    def fn(B, u0, D):
        u, info = layer(B, {"D": D}, u0)
        assert info.all_converged
        return u

    assert fn(B, u0, D).shape == (1, 3, pb.n)
    assert torch.autograd.gradcheck(fn, (B, u0, D), fast_mode=True)


@pytest.mark.parametrize("form", ["poisson", "nonlinear"])
def test_implicit_gradient_equals_unrolled_gradient(form, square):
    pb = square(form, 2)
    B = _basis(2, (pb.n, 4), seed=3).requires_grad_(True)
    f = torch.tensor([3.0, 8.0], dtype=F64, requires_grad=True)
    weights = torch.linspace(-1, 1, pb.n, dtype=F64)
    grads = {}
    for mode in ("implicit", "unrolled"):
        u, info = HardConstraint(pb, backward=mode, tol=1e-14, maxiter=200)(B, {"f": f})
        assert info.all_converged
        grads[mode] = torch.autograd.grad((weights * u**2).sum(), (B, f))
    for gi, gu in zip(grads["implicit"], grads["unrolled"]):
        torch.testing.assert_close(gi, gu, atol=1e-6 * gu.abs().max(), rtol=1e-6)


def test_exact_hessian_matters_for_nonlinear_and_not_for_linear(square):
    B = _basis(1, (square("poisson", 1).n, 3), seed=4)
    for form, same in (("poisson", True), ("nonlinear", False)):
        pb = square(form, 1)
        f = torch.tensor([30.0], dtype=F64)
        g = {}
        for hessian in ("exact", "gauss_newton"):
            Bg = B.clone().requires_grad_(True)
            u, _ = HardConstraint(pb, hessian=hessian, tol=1e-14)(Bg, {"f": f})
            g[hessian] = torch.autograd.grad(u.sum(), Bg)[0]
        close = torch.allclose(g["exact"], g["gauss_newton"], atol=1e-10 * g["exact"].abs().max(), rtol=1e-8)
        assert close == same


def test_rows_and_local_dofs_select_what_is_enforced(square):
    pb = square("poisson", 2)
    f = torch.tensor([5.0], dtype=F64)
    B = _basis(1, (pb.n, 4), seed=5)
    free = torch.as_tensor(pb.free_dofs)
    u_all, _ = HardConstraint(pb)(B, {"f": f})
    u_free, _ = HardConstraint(pb, rows=free)(B, {"f": f})
    assert not torch.allclose(u_all, u_free)
    # the enforced rows are near-stationary: the free-row gradient J_w^T r + rho w vanishes
    layer = HardConstraint(pb, rows=free)
    R = layer.model.residual(u_free, {"f": f})  # the weighted rows the layer minimises
    w = torch.linalg.lstsq(B, u_free.unsqueeze(-1)).solution.squeeze(-1)
    assert _grad_w_norm(layer, B, {"f": f}, w).item() < 1e-9 * R.norm()
    # a basis on a subset of DOFs (zero elsewhere) equals the embedded full basis
    dofs = torch.arange(0, pb.n, 2)
    Bfull = torch.zeros_like(B)
    Bfull[:, dofs] = B[:, dofs]
    u_loc, _ = HardConstraint(pb, dofs=dofs)(B[:, dofs], {"f": f})
    u_emb, _ = HardConstraint(pb)(Bfull, {"f": f})
    torch.testing.assert_close(u_loc, u_emb[:, dofs], atol=1e-12, rtol=0)


@pytest.mark.parametrize("linear", [True, False])
def test_time_dependent_recovers_trajectory_in_span(linear, make_heat, heat):
    from femoe.layers import solve_trajectory

    if linear:
        pb = make_heat(lambda u, v, w: w.D * dot(grad(u), grad(v)) - v, 2, theta=0.5, dirichlet={"left": 0.0},
                       D=0.2)
    else:
        pb = heat
    x = torch.as_tensor(pb.doflocs[0])
    u0 = 1.0 + x * (2 - x)
    U, _ = solve_trajectory(pb, u0, 0.1, 3, atol=1e-13, rtol=0)  # (4, n), level 0 = u0
    B = _basis(1, (4, pb.n, 3), seed=6)
    B[0, :, :, 1] = U
    # nonlinear least squares has local minima: from w = 0, LM on the unweighted rows reaches the
    # one in the span for this problem; linear problems have a single minimum whatever the weights
    layer = HardConstraint(pb, dt=0.1, rho=0.0, tol=1e-13, row_scale="mass" if linear else None)
    u, info = layer(B, None, u0)
    assert info.all_converged
    torch.testing.assert_close(u[0], U, atol=1e-9, rtol=0)


def test_unconverged_warns_once_per_layer_and_strict_raises(square):
    pb = square("nonlinear", 2)
    B = _basis(2, (pb.n, 6), seed=7)
    f = torch.tensor([40.0, 60.0], dtype=F64)
    layer = HardConstraint(pb, maxiter=1)
    with pytest.warns(ConvergenceWarning, match="once per layer") as record:
        _, info = layer(B, {"f": f})
        layer(B, {"f": f})
    assert len([r for r in record if issubclass(r.category, ConvergenceWarning)]) == 1
    assert not info.converged.any() and (info.iterations == 1).all()
    with pytest.warns(ConvergenceWarning):  # a new layer warns again
        HardConstraint(pb, maxiter=1)(B, {"f": f})
    with pytest.raises(ConvergenceError) as err:
        HardConstraint(pb, maxiter=1, strict=True)(B, {"f": f})
    assert err.value.info is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HardConstraint(pb)(B, {"f": f})


def test_nonfinite_inputs_raise_before_any_solve(square, heat):
    pb = square("poisson", 1)
    layer = HardConstraint(pb)
    B = _basis(2, (pb.n, 3))
    B[1, 4, 2] = float("nan")
    with pytest.raises(NonFiniteError, match=r"B .*index \(1, 4, 2\)"):
        layer(B, {"f": 1.0})
    f = torch.ones(pb.n, dtype=F64)
    f[5] = float("inf")
    with pytest.raises(NonFiniteError, match=r"params\['f'\].*index \(5,\)"):
        layer(_basis(2, (pb.n, 3)), {"f": f})
    hl = HardConstraint(heat, dt=0.1)
    u0 = torch.zeros(heat.n, dtype=F64)
    u0[0] = float("nan")
    with pytest.raises(NonFiniteError, match="u0"):
        hl(_basis(1, (3, heat.n, 2)), None, u0)
    assert layer.last_info is None


def test_wrong_shapes_and_options_name_expected_and_received(square, heat):
    pb = square("poisson", 1)
    with pytest.raises(ShapeError, match=rf"B must have shape \(batch, {pb.n}, N\).*received \(2, {pb.n + 1}, 3\)"):
        HardConstraint(pb)(_basis(2, (pb.n + 1, 3)), {"f": 1.0})
    with pytest.raises(ShapeError, match="float32 or float64"):
        HardConstraint(pb)(torch.zeros(2, pb.n, 3, dtype=torch.int64), {"f": 1.0})
    with pytest.raises(ShapeError, match="batch"):
        HardConstraint(pb)(_basis(2, (pb.n, 3)), {"f": torch.ones(3, dtype=F64)})
    hp = heat
    with pytest.raises(ShapeError, match=r"\(batch, T \+ 1, "):
        HardConstraint(hp, dt=0.1)(_basis(1, (hp.n, 2)), None, torch.zeros(hp.n, dtype=F64))
    with pytest.raises(ShapeError, match="u0 must have shape"):
        HardConstraint(hp, dt=0.1)(_basis(1, (3, hp.n, 2)), None, torch.zeros(hp.n + 2, dtype=F64))
    with pytest.raises(ConfigError, match="Pick one of"):
        HardConstraint(pb, backward="adjoint")
    with pytest.raises(ConfigError, match="Pick one of"):
        HardConstraint(pb, hessian="bfgs")
    with pytest.raises(ShapeError, match="rows must index"):
        HardConstraint(pb, rows=[0, pb.n])


@pytest.mark.slow
def test_full_gradcheck_nonlinear_and_time_dependent(square, heat):
    pb = square("nonlinear", 1)
    B = _basis(2, (pb.n, 3), seed=1).requires_grad_(True)
    f = torch.tensor(np.random.default_rng(0).uniform(2, 6, (2, pb.n)), dtype=F64, requires_grad=True)
    assert _gradcheck_layer(HardConstraint(pb, tol=1e-14), B, {"f": f})
    hp = heat
    layer = HardConstraint(hp, dt=0.1, tol=1e-14)
    B = (0.5 * _basis(1, (3, hp.n, 3), seed=2)).requires_grad_(True)
    u0 = (1.0 + torch.as_tensor(hp.doflocs[0])).unsqueeze(0).requires_grad_(True)
    D = torch.tensor(0.2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda B, u0, D: layer(B, {"D": D}, u0)[0], (B, u0, D))


@pytest.mark.parametrize("case", ["steady", "trajectory"])
def test_coloured_curvature_equals_dense_hessian_in_w(case, square, heat):
    from femoe.layers._lm import _hessian
    from femoe.layers._residuals import INITIAL, basis_field

    if case == "steady":
        pb = square("nonlinear", 2)
        layer = HardConstraint(pb, rows=torch.as_tensor(pb.free_dofs))
        B, p = _basis(2, (pb.n, 4), seed=8), {"f": torch.tensor([20.0, 30.0], dtype=F64)}
    else:
        pb = heat
        layer = HardConstraint(pb, dt=0.1)
        B = _basis(2, (3, pb.n, 4), seed=9)
        p = {INITIAL: 1.0 + torch.as_tensor(pb.doflocs[0]).unsqueeze(0)}
    w = torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    r = layer.model.residual(basis_field(B, w), p)
    G = torch.autograd.grad(0.5 * (r**2).sum(), w, create_graph=True)[0]
    H_dense = _hessian(G, w, None)
    _, Jw = layer.model.linearize(basis_field(B, w.detach()), B, p)
    H = Jw.transpose(1, 2) @ Jw + layer.model.curvature(basis_field(B, w.detach()), B, p, r.detach())
    assert (H - Jw.transpose(1, 2) @ Jw).abs().max() > 1e-3 * H.abs().max()  # the second-order term is there
    torch.testing.assert_close(H, H_dense, atol=1e-10 * H.abs().max(), rtol=1e-10)


def test_float32_follows_the_input_with_a_float32_tolerance(square):
    pb = square("nonlinear", 2)
    B = _basis(2, (pb.n, 4), seed=10).float().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u, info = HardConstraint(pb)(B, {"f": torch.tensor([3.0, 5.0])})
    assert u.dtype == torch.float32 and info.all_converged
    u64, _ = HardConstraint(pb)(B.detach().double(), {"f": torch.tensor([3.0, 5.0], dtype=F64)})
    torch.testing.assert_close(u.double(), u64, atol=1e-3 * u64.abs().max(), rtol=0)
    u.sum().backward()
    assert B.grad.dtype == torch.float32 and torch.isfinite(B.grad).all()


def test_mass_row_scale_keeps_the_ridge_small_on_fine_meshes(make_square):
    # weak-form rows scale like h^d: on a fine mesh the ridge rho ||w||^2 swamps the raw rows
    # and pulls u towards 0; rows divided by M_ii are pointwise residuals and keep the solution
    from femoe.reference import solve

    pb = make_square("unit_load", 5, dirichlet="all")
    u_ref = torch.as_tensor(solve(pb)[0])
    B = _basis(1, (pb.n, 4), seed=11)
    B[0, :, 0] = u_ref
    err = {}
    for rs in ("mass", None):
        u, _ = HardConstraint(pb, row_scale=rs)(B)
        err[rs] = float((u[0] - u_ref).norm() / u_ref.norm())
    assert err["mass"] < 1e-6 and err[None] > 0.05, err
    explicit, _ = HardConstraint(pb, row_scale=pb.row_scale())(B)
    torch.testing.assert_close(explicit, HardConstraint(pb)(B)[0])


def test_mass_diagonal_matches_scikit_fem():
    for elem in (fe.ElementTriP1(), fe.ElementTriP2(), fe.ElementVector(fe.ElementTriP1())):
        basis = fe.Basis(fe.MeshTri().refined(2).with_defaults(), elem)
        pb = Problem(basis, lambda u, v, w: dot(u, v) if u.value.dim() > 4 else u * v, dirichlet={"left": 0.0})
        M = fe.BilinearForm(lambda u, v, w: sk_dot(u, v) if u.ndim > 2 else u * v).assemble(basis)
        np.testing.assert_allclose(pb.mass_diagonal, M.diagonal(), rtol=1e-12, atol=1e-15)
        s = pb.row_scale()
        assert np.all(s[pb.dirichlet_dofs] == 1.0)
        np.testing.assert_allclose(s[pb.free_dofs], 1 / M.diagonal()[pb.free_dofs])


def test_the_least_squares_core_refuses_a_model_that_is_not_a_residual_model():
    """least_squares_solve and LeastSquaresRoot take a ResidualModel (the contract their optional
    hooks come from); anything else is refused up front with the fix, not an AttributeError later."""
    from femoe.errors import ProblemError
    from femoe.layers import LeastSquaresRoot, LMOptions, least_squares_solve

    class Duck:
        def residual(self, u, p):
            return u

    B = torch.zeros(1, 3, 2, dtype=torch.float64)
    with pytest.raises(ProblemError, match="subclass ResidualModel"):
        least_squares_solve(Duck(), B)
    with pytest.raises(ProblemError, match="subclass ResidualModel"):
        LeastSquaresRoot(Duck(), LMOptions(), [], {}, [])


def test_the_finiteness_check_is_exact_where_the_sum_is_not():
    """check_finite's shortcut (a finite sum) must not pass a NaN or an Inf, and a sum that
    overflows on finite entries must not raise."""
    from femoe.layers._validate import check_finite

    big = torch.full((2, 3), 1e308, dtype=F64)
    check_finite("x", big)  # the sum overflows to inf: finite entries, no error
    check_finite("x", torch.empty(0, dtype=F64))
    for bad in (float("nan"), float("inf"), -float("inf")):
        x = torch.ones(2, 3, dtype=F64)
        x[1, 2] = bad
        with pytest.raises(NonFiniteError, match=r"x .*index \(1, 2\)"):
            check_finite("x", x)
    x = torch.zeros(4, dtype=torch.float32)
    x[0], x[3] = float("inf"), -float("inf")  # +inf and -inf: the sum is NaN, still caught
    with pytest.raises(NonFiniteError, match=r"index \(0,\)"):
        check_finite("x", x)


def test_a_layer_called_again_with_other_parameters_solves_again(square, heat):
    """What a model reuses from its last linearisation lasts one solve: a second call with other
    parameter values (floats, which a comparison of tensors does not see) gives a fresh layer's
    answer, not the first call's (the LM's first field, w = 0, is the same in both calls)."""
    pb = square("poisson", 2)
    B = _basis(2, (pb.n, 4))
    layer = HardConstraint(pb)
    layer(B, {"f": 0.0})
    u, info = layer(B, {"f": 5.0})
    u_fresh, _ = HardConstraint(pb)(B, {"f": 5.0})
    assert float(u.abs().max()) > 1e-3 and int(info.iterations.max()) > 0
    torch.testing.assert_close(u, u_fresh, rtol=1e-10, atol=1e-12)
    hl = HardConstraint(heat, dt=0.1)
    Bt = _basis(2, (3, heat.n, 3))
    u0 = torch.full((2, heat.n), 0.3, dtype=F64)
    hl(Bt, {"D": 0.2}, u0)
    ut, _ = hl(Bt, {"D": 2.0}, u0)
    torch.testing.assert_close(ut, HardConstraint(heat, dt=0.1)(Bt, {"D": 2.0}, u0)[0], rtol=1e-10, atol=1e-12)
