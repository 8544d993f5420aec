"""Manufactured-solution convergence of the reference solver (linear and nonlinear problems).

Expected rates: L2 error O(h^{p+1}), H1 seminorm error O(h^p) for Lagrange elements of order p.
Each case solves on three meshes, h halving, and checks the last observed rate within 0.1.
"""

import numpy as np
import skfem as fe
import torch
from skfem.helpers import dot as sk_dot

from femoe.helpers import dot, grad
from femoe.problem import Problem
from femoe.reference import solve

PI = np.pi


def exact(x):
    return np.prod(np.sin(PI * x), axis=0)


def exact_grad(x):
    d = x.shape[0]
    out = []
    for i in range(d):
        g = PI * np.cos(PI * x[i])
        for j in range(d):
            if j != i:
                g = g * np.sin(PI * x[j])
        out.append(g)
    return np.array(out)


def laplacian(x):
    return -x.shape[0] * PI**2 * exact(x)


def source_linear(x):
    return -laplacian(x)


def source_nonlinear(x):
    # f = -div((1 + u^2) grad u) = -(1 + u^2) lap u - 2 u |grad u|^2
    u, g = exact(x), exact_grad(x)
    return -(1 + u**2) * laplacian(x) - 2 * u * (g**2).sum(0)


def linear_form(u, v, w):
    return dot(grad(u), grad(v)) - w.f(w.x) * v


def nonlinear_form(u, v, w):
    return dot((1 + u**2) * grad(u), grad(v)) - w.f(w.x) * v


def errors(basis, uh):
    @fe.Functional
    def l2(w):
        return (w["uh"] - exact(w.x)) ** 2

    @fe.Functional
    def h1(w):
        d = w["uh"].grad - exact_grad(w.x)
        return sk_dot(d, d)

    ih = basis.interpolate(uh)
    return np.sqrt(l2.assemble(basis, uh=ih)), np.sqrt(h1.assemble(basis, uh=ih))


MESHES = {
    "tri": (lambda k: fe.MeshTri.init_symmetric().refined(k), fe.ElementTriP1, fe.ElementTriP2, (3, 4, 5)),
    "tet": (lambda k: fe.MeshTet.init_tensor(*(np.linspace(0, 1, 2**k + 1),) * 3), fe.ElementTetP1, fe.ElementTetP2, (2, 3, 4)),
}


def torch_source(f):
    return lambda x: torch.as_tensor(f(x.detach().cpu().numpy()), dtype=x.dtype, device=x.device)


def observed_rates(cell: str, order: int, nonlinear: bool, levels=None):
    make, P1, P2, default_levels = MESHES[cell]
    hs, e0, e1 = [], [], []
    for k in levels or default_levels:
        mesh = make(k).with_defaults()
        basis = fe.Basis(mesh, (P1 if order == 1 else P2)(), intorder=2 * order + 2)
        f = source_nonlinear if nonlinear else source_linear
        problem = Problem(basis, nonlinear_form if nonlinear else linear_form,
                          dirichlet={name: 0.0 for name in mesh.boundaries}, defaults={"f": torch_source(f)})
        uh, info = solve(problem)
        assert info.converged
        a, b = errors(basis, uh)
        hs.append(mesh.param())
        e0.append(a)
        e1.append(b)
    rate = lambda e: np.log(e[-2] / e[-1]) / np.log(hs[-2] / hs[-1])  # noqa: E731
    return rate(e0), rate(e1), hs, e0, e1


class ConvergenceCase:
    cell = "tri"
    order = 1
    nonlinear = False
    levels = None

    def test_rates(self):
        r0, r1, hs, e0, e1 = observed_rates(self.cell, self.order, self.nonlinear, self.levels)
        msg = (f"{self.cell} P{self.order} {'nonlinear' if self.nonlinear else 'linear'}: observed L2 rate "
               f"{r0:.3f} (expected {self.order + 1}), H1 rate {r1:.3f} (expected {self.order}); h={hs}, "
               f"L2 errors={e0}, H1 errors={e1}")
        print(msg)
        assert abs(r0 - (self.order + 1)) <= 0.1, msg
        assert abs(r1 - self.order) <= 0.1, msg


class TestTriP1Linear(ConvergenceCase):
    pass


class TestTriP2Linear(ConvergenceCase):
    order = 2


class TestTriP1Nonlinear(ConvergenceCase):
    nonlinear = True


class TestTriP2Nonlinear(ConvergenceCase):
    order = 2
    nonlinear = True


class TestTetP1Linear(ConvergenceCase):
    cell = "tet"


class TestTetP2Linear(ConvergenceCase):
    cell = "tet"
    order = 2
    levels = (1, 2, 3)


class TestTetP1Nonlinear(ConvergenceCase):
    cell = "tet"
    nonlinear = True


class TestTetP2Nonlinear(ConvergenceCase):
    cell = "tet"
    order = 2
    nonlinear = True
    levels = (1, 2, 3)
