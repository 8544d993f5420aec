"""CUDA: every differentiable path on the GPU agrees with the CPU and passes gradcheck.

Marked ``gpu``; skipped where CUDA is not available (CI). Run on a GPU machine with
``python -m pytest -m gpu tests/test_gpu.py``.
"""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.helpers import dot, grad
from femoe.problem import Problem

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
F64 = torch.float64


@pytest.fixture
def heat(make_heat):
    """u_t = div(0.05 (1 + u^2) grad u), Crank-Nicolson, u = 1 on "left", 32 cells."""
    return make_heat(lambda u, v, w: w.D * dot((1 + u**2) * grad(u), grad(v)), 5, theta=0.5, dirichlet={"left": 1.0},
                     D=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residual_and_jacobian_on_cuda_equal_cpu(dtype, make_square):
    p = make_square("nonlinear", f=1.0)
    u = torch.rand(3, p.n, dtype=dtype, generator=torch.Generator().manual_seed(0))
    R, J = p.residual_and_jacobian(u)
    Rc, Jc = p.residual_and_jacobian(u.cuda())
    assert Rc.is_cuda and Jc.values.is_cuda
    tol = 1e-12 if dtype == F64 else 1e-4
    torch.testing.assert_close(Rc.cpu(), R, rtol=tol, atol=tol)
    torch.testing.assert_close(Jc.values.cpu(), J.values, rtol=tol, atol=tol)


def test_gradcheck_residual_on_cuda(make_square):
    p = make_square("nonlinear", 1, f=1.0)
    u = torch.rand(2, p.n, dtype=F64, device="cuda", requires_grad=True)
    f = torch.rand(2, dtype=F64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda u, f: p.residual_and_jacobian(u, {"f": f})[1].values, (u, f))


@pytest.mark.parametrize("solver", ["cg", "gmres", "dense_cholesky", "auto"])
def test_sparse_solve_gradcheck_on_cuda(solver):
    from femoe.linalg import sparse_solve

    p = Problem(fe.Basis(fe.MeshTri().refined(2).with_defaults(), fe.ElementTriP1()),
                lambda u, v, w: dot(grad(u), grad(v)) + u * v)
    A = p.jacobian(torch.zeros(p.n, dtype=F64, device="cuda"))
    vals = A.values.detach().requires_grad_(True)
    b = torch.rand(1, p.n, dtype=F64, device="cuda", requires_grad=True)
    from femoe.sparse import BatchedCSR

    # gradcheck perturbs one stored value at a time, which makes A unsymmetric: the symmetric
    # solvers (which refuse an unsymmetric A) see the symmetrised values instead
    perm = torch.as_tensor(A.pattern.transpose_permutation, device="cuda")
    symmetric = solver in ("cg", "dense_cholesky", "auto")
    opts = {"rtol": 1e-13} if solver in ("cg", "gmres") else {}

    def f(v, b):
        v = 0.5 * (v + v[:, perm]) if symmetric else v
        return sparse_solve(BatchedCSR(A.pattern, v), b, solver, **opts)

    assert torch.autograd.gradcheck(f, (vals, b))


def test_constraint_layers_on_cuda_equal_cpu(make_square):
    from femoe.experts import HardConstraintMoE, PatchConstraint
    from femoe.layers import HardConstraint

    p = make_square("nonlinear", f=1.0)
    B = torch.randn(2, p.n, 6, dtype=F64, generator=torch.Generator().manual_seed(1))
    for layer in (HardConstraint(p), HardConstraintMoE(p, 4, partition="rcb")):
        u, _ = layer(B)
        uc, _ = layer(B.cuda())
        assert uc.is_cuda
        torch.testing.assert_close(uc.cpu(), u, rtol=1e-8, atol=1e-9)
    layer = PatchConstraint(p, 4, partition="rcb")
    U = torch.randn(2, p.n, dtype=F64, generator=torch.Generator().manual_seed(2))
    u, _ = layer(U)
    uc, info = layer(U.cuda())
    torch.testing.assert_close(uc.cpu(), u, rtol=1e-7, atol=1e-8)


def test_gradcheck_layers_on_cuda(heat):
    from femoe.experts import HardConstraintMoE, PatchConstraint

    p = heat
    moe = HardConstraintMoE(p, 2, partition="slab", dt=0.1)
    B = torch.randn(1, 3, p.n, 3, dtype=F64, device="cuda", requires_grad=True)
    u0 = (0.5 + torch.rand(1, p.n, dtype=F64, device="cuda")).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda B, u0: moe(B, u0=u0)[0], (B, u0), atol=1e-6)
    patch = PatchConstraint(p, 2, partition="slab", dt=0.1, rtol=1e-13, atol=1e-13)
    U = torch.randn(1, 3, p.n, dtype=F64, device="cuda", requires_grad=True)
    assert torch.autograd.gradcheck(lambda U, u0: patch(U, u0=u0)[0], (U, u0), atol=1e-6)


def test_short_training_run_on_cuda(tmp_path):
    from femoe.train.config import config_from_dict
    from femoe.train.run import run

    cfg = config_from_dict({
        "name": "gpu", "results": str(tmp_path / "r"), "methods": ["soft", "pihc", "moe", "patch"],
        "problem": {"name": "diffusion_sorption_1d", "params": {"n_cells": 32, "n_saved": 6, "substeps": 8}},
        "data": {"n_train": 4, "n_test": 2, "dir": str(tmp_path / "d")},
        "network": {"n_basis": 4, "width": 16, "depth": 2, "sensors": 4},
        "experts": {"k": 2, "partition": "slab"},
        "train": {"epochs": 1, "batch_size": 2, "device": "cuda"},
    })
    summary = run(cfg, isolate=False, progress=False)
    assert not summary["errors"]
    assert all(np.isfinite(r["rel_l2_mean"]) for r in summary["methods"].values())
