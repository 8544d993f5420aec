"""``pihc_patch``: PI-HC's field corrected by patch mode (exact solves on the patch interiors
with the PI-HC field's interface values)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import skfem as fe
import torch

from femoe.experts import PatchConstraint
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.problem import Problem
from femoe.train.config import load_config
from femoe.train.methods import PIHC, build_method
from femoe.train.task import Task

F64 = torch.float64


def _darcy_like():
    mesh = fe.MeshTri().refined(4).with_defaults()
    basis = fe.Basis(mesh, fe.ElementTriP1())
    return Problem(basis, lambda u, v, w: w.kappa * dot(grad(u), grad(v)) - w.f * v,
                   dirichlet={k: 0.0 for k in ("left", "right", "top", "bottom")},
                   coefficients={"kappa": "nodal"}, defaults={"f": 1.0})


@pytest.mark.parametrize("batch", [1, 2])
def test_the_patch_correction_never_raises_the_energy_error_of_a_linear_symmetric_problem(batch):
    """The corrected field is the discrete harmonic extension of the PI-HC field's interface
    values: the least-energy field with them, so its energy error is at most PI-HC's."""
    pb = _darcy_like()
    g = torch.Generator().manual_seed(0)
    kappa = torch.exp(0.5 * torch.randn(batch, pb.n, dtype=F64, generator=g))
    B = torch.randn(batch, pb.n, 8, dtype=F64, generator=g)
    u_hc, info = HardConstraint(pb, tol=1e-12)(B, {"kappa": kappa})
    assert info.all_converged
    u, pinfo = PatchConstraint(pb, 4, partition="rcb", rtol=1e-12, atol=1e-14)(u_hc, {"kappa": kappa})
    assert pinfo.all_converged
    free = pb.free_dofs
    for b in range(batch):
        p = {"kappa": kappa[b:b + 1]}
        R0, J = pb.residual_and_jacobian(torch.zeros(1, pb.n, dtype=F64), p)
        K = sp.csr_matrix((J.values[0].numpy(), J.pattern.indices, J.pattern.indptr), shape=(pb.n, pb.n)).toarray()
        ustar = np.zeros(pb.n)
        ustar[free] = np.linalg.solve(K[np.ix_(free, free)], -R0[0, free].numpy())

        def energy(v):
            e = (v - ustar)[free]
            return float(e @ K[np.ix_(free, free)] @ e)

        e_hc, e_patch = energy(u_hc[b].numpy()), energy(u[b].numpy())
        assert e_patch <= e_hc * (1 + 1e-10)
        assert e_patch < 0.9 * e_hc  # a random basis: the correction removes most of the error


def test_pihc_patch_trains_as_pihc_and_corrects_at_evaluation(tmp_path):
    from pathlib import Path

    cfg = load_config(Path(__file__).resolve().parent / "configs" / "smoke_darcy_2d.toml")
    cfg.data.dir = str(tmp_path / "data")
    cfg.methods = ["pihc", "pihc_patch"]
    task = Task(cfg)
    torch.manual_seed(0)
    a = build_method("pihc", task)
    torch.manual_seed(0)
    b = build_method("pihc_patch", task)
    assert isinstance(b, PIHC)
    b.net.load_state_dict(a.net.state_dict())
    x = task.test.inputs[:2]
    a.train(), b.train()
    ua, _ = a(x)
    ub, _ = b(x)
    torch.testing.assert_close(ub, ua, rtol=0, atol=0)  # training: PI-HC's field and loss
    a.eval(), b.eval()
    with torch.no_grad():
        ua, _ = a(x)
        ub, info = b(x)
    params, _ = task.layer_args(x)
    assert info["unconverged"] == 0
    # every row but the interface rows now holds; PI-HC's did not
    interior = np.ones(task.n, dtype=bool)
    interior[b.patch.partition.interface] = False
    interior[task.problem.dirichlet_dofs] = False
    ra = task.problem.residual(ua, params)[:, interior].abs().max()
    rb = task.problem.residual(ub, params)[:, interior].abs().max()
    assert rb < 1e-8 * ra
    # the interface values are PI-HC's, the Dirichlet values exact
    d = task.problem.dirichlet_dofs
    iface = torch.as_tensor(np.setdiff1d(b.patch.partition.interface, d))
    torch.testing.assert_close(ub[:, iface], ua[:, iface])
    assert float(ub[:, torch.as_tensor(d)].abs().max()) == 0.0
