"""Fields moved between two meshes of one domain (femoe.problem.interpolation_operator) and a
network run on the training mesh for a test on a finer one (femoe.train.task.NetworkOnMesh)."""

from types import SimpleNamespace

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.errors import ConfigError, MeshError, ProblemError
from femoe.problem import find_cells, interpolation_operator
from femoe.problems import get_problem


def _space(mesh, elem):
    return SimpleNamespace(basis=fe.Basis(mesh, elem))


def _periodic(grid):
    return get_problem("navier_stokes_2d").build(grid=grid, n_steps=2, T=0.5, lift="paper")


def _smooth(x):
    return np.sin(2 * np.pi * x[0]) * np.cos(2 * np.pi * x[1]) + 0.3 * np.cos(4 * np.pi * x[0])


def test_periodic_mixed_space_prolongation_is_exact_on_nested_meshes():
    """Coarse nodes keep their values, fine nodes on a coarse edge get the mean of its ends, and
    each field of the (omega, psi) space goes to its own field."""
    pc, pf = _periodic(4), _periodic(8)
    P = interpolation_operator(pc, pf)
    assert P.shape == (pf.n, pc.n)
    np.testing.assert_allclose(P.sum(axis=1).A1, 1.0, atol=1e-13)  # Lagrange: constants kept
    ic, jf = pc.basis.split_indices(), pf.basis.split_indices()
    u = np.zeros(pc.n)
    u[ic[0]] = _smooth(pc.doflocs[:, ic[0]])
    u[ic[1]] = 5.0 + np.cos(2 * np.pi * pc.doflocs[1, ic[1]])
    v = P @ u
    for f, g in ((0, lambda x: _smooth(x)), (1, lambda x: 5.0 + np.cos(2 * np.pi * x[1]))):
        xf = np.mod(pf.doflocs[:, jf[f]], 1.0)
        on_coarse = np.all(np.isclose(np.mod(xf * 4, 1.0), 0.0) | np.isclose(np.mod(xf * 4, 1.0), 1.0), axis=0)
        assert on_coarse.sum() == len(ic[f])
        np.testing.assert_allclose(v[jf[f]][on_coarse], g(xf[:, on_coarse]), atol=1e-12)
        # a fine node between coarse nodes is the midpoint of a coarse edge: its row holds 1/2
        # at the edge's two ends, which lie h_c / 2 away on opposite sides (across the seam too)
        for k in np.nonzero(~on_coarse)[0]:
            row = P[jf[f][k]]
            cols = row.indices
            np.testing.assert_allclose(row.data, [0.5, 0.5], atol=1e-12)
            assert set(cols) <= set(ic[f].tolist())
            pos = [np.mod(pc.doflocs[:, c], 1.0) for c in cols]
            d = [(p - xf[:, k] + 0.5) % 1.0 - 0.5 for p in pos]  # shortest periodic offsets
            np.testing.assert_allclose(d[0], -d[1], atol=1e-12)
            assert 0.124 < np.abs(d[0]).max() < 0.126
    # the interpolation error of a smooth field falls as h^2
    errs = []
    for n in (8, 16):
        pc, pf = _periodic(n), _periodic(2 * n)
        ic, jf = pc.basis.split_indices()[0], pf.basis.split_indices()[0]
        P = interpolation_operator(pc, pf)
        u = np.zeros(pc.n)
        u[ic] = _smooth(pc.doflocs[:, ic])
        errs.append(np.abs((P @ u)[jf] - _smooth(pf.doflocs[:, jf])).max())
    assert 3.3 < errs[0] / errs[1] < 4.7


def test_unstructured_and_higher_order_fields_are_reproduced():
    """On the plate with holes and a refinement of it: P1 reproduces linear fields, P2
    quadratics, and a Taylor-Hood space (vector P2 x P1) each component and field."""
    darcy = get_problem("darcy_2d").build()
    mc = darcy.basis.mesh
    mf = mc.refined()
    for elem, deg in ((fe.ElementTriP1(), 1), (fe.ElementTriP2(), 2)):
        sc, sf = _space(mc, elem), _space(mf, elem)
        g = (lambda x: 2.0 * x[0] - 3.0 * x[1] + 0.5) if deg == 1 else (lambda x: x[0] ** 2 - x[0] * x[1] + 0.2)
        np.testing.assert_allclose(interpolation_operator(sc, sf) @ g(sc.basis.doflocs), g(sf.basis.doflocs),
                                   atol=1e-11)
    th = fe.ElementVector(fe.ElementTriP2()) * fe.ElementTriP1()
    sc, sf = _space(mc, th), _space(mf, th)
    funcs = [lambda x: x[0] * x[1], lambda x: 1.0 - x[1] ** 2, lambda x: 3.0 * x[0] - x[1]]

    def fill(space):
        (bu, bp), (iu, ip) = space.basis.split_bases(), space.basis.split_indices()
        u = np.zeros(space.basis.N)
        comp = bu.split_indices()
        for c in range(2):
            u[iu[comp[c]]] = funcs[c](bu.doflocs[:, comp[c]])
        u[ip] = funcs[2](bp.doflocs)
        return u

    np.testing.assert_allclose(interpolation_operator(sc, sf) @ fill(sc), fill(sf), atol=1e-11)


def test_bad_transfers_are_refused():
    mc = fe.MeshTri().refined(2)
    far = fe.MeshTri().refined(2).translated([3.0, 0.0])
    with pytest.raises(MeshError, match="lie in no cell"):
        interpolation_operator(_space(mc, fe.ElementTriP1()), _space(far, fe.ElementTriP1()))
    with pytest.raises(ProblemError, match="same elements"):
        interpolation_operator(_space(mc, fe.ElementTriP1()), _space(mc, fe.ElementTriP2()))
    with pytest.raises(ProblemError, match="scalar field"):
        interpolation_operator(_space(mc, fe.ElementTriP1() * fe.ElementTriP1()), _space(mc, fe.ElementTriP1()))
    with pytest.raises(MeshError, match="shape"):
        find_cells(fe.Basis(mc, fe.ElementTriP1()), np.zeros((3, 2)))


def _ns_config(tmp_path, kind, where="train"):
    from femoe.train.config import config_from_dict

    return config_from_dict({
        "name": "sr", "methods": ["pihc"],
        "problem": {"name": "navier_stokes_2d", "params": {"grid": 4, "n_steps": 2, "T": 0.5, "lift": "paper"}},
        "data": {"n_train": 2, "n_test": 2, "dir": str(tmp_path / "coarse"), "test_params": {"grid": 8},
                 "test_network_mesh": where},
        "network": {"kind": kind, "n_basis": 3, "width": 16, "depth": 2, "sensors": 16, "solve_algebraic": True,
                    "tendencies": 2},
        "train": {"epochs": 1, "batch_size": 2},
    })


@pytest.mark.parametrize("kind", ["gnn", "deeponet"])
def test_basis_on_the_training_mesh_gives_interpolated_columns(tmp_path, kind):
    """network_mesh = "train": the network's and the tendencies' columns on the test mesh are
    exactly the interpolation of their columns on the training mesh (batch 1 and 2, both
    fields; tendencies at the inputs and at given states), the algebraic field is solved on the
    test mesh, and the gradient reaches the network's weights."""
    from femoe.train.methods import build_method
    from femoe.train.task import Task, interpolation_matrix, transfer_method

    coarse = Task(_ns_config(tmp_path, kind))
    fine = coarse.test_mesh_task()
    torch.manual_seed(0)
    m = build_method("pihc", coarse)
    mf = transfer_method(m, fine, "train")
    mr = transfer_method(m, fine, "test")
    P = torch.as_tensor(interpolation_operator(coarse.problem, fine.problem).toarray())
    R = torch.as_tensor(interpolation_matrix(fine, coarse.input_points()).toarray())
    L = coarse.n_levels
    for b in (1, 2):
        xf = fine.test.inputs[:b]
        xc = (R @ xf.double().T).T.to(xf.dtype)
        with torch.no_grad():
            raw_c = m._network_output(xc)
            raw_f = mf._network_output(xf)
            assert raw_f.shape == (b, L, fine.n, 3)
            torch.testing.assert_close(raw_f, torch.einsum("fc,blcn->blfn", P, raw_c), rtol=1e-12, atol=1e-12)
            Bf, Br = mf.network_output(xf), mr.network_output(xf)
            assert Bf.shape == Br.shape == (b, L, fine.n, 3 + (L - 1) * 2)
            # the tendency columns: the coarse ones interpolated, then completed on the test mesh
            Tc = coarse.tendency_columns(xc, L).double()
            torch.testing.assert_close(Bf[..., 3:], mf._completed(torch.einsum("fc,blcn->blfn", P, Tc)),
                                       rtol=1e-10, atol=1e-12)
            assert not torch.allclose(Bf[..., 3:], Br[..., 3:])  # the test mesh's own tendencies differ
            # the algebraic field (psi) solves the test mesh's rows: completing again changes nothing
            torch.testing.assert_close(mf._completed(Bf), Bf, rtol=1e-9, atol=1e-12)
            # tendencies at states (later passes): states on the test mesh are taken to the training mesh
            states_c = torch.randn(b, L - 1, coarse.n, dtype=torch.float64, generator=torch.Generator().manual_seed(b))
            states_f = torch.einsum("fc,blc->blf", P, states_c)
            torch.testing.assert_close(mf.network_mesh.tendency_columns(xf, L, states_f),
                                       torch.einsum("fc,blcn->blfn", P, coarse.tendency_columns(xc, L, states_c).double()),
                                       rtol=1e-10, atol=1e-12)
    if kind == "gnn":  # the fine-mesh GNN is another function; the DeepONet's trunk is not
        assert not torch.allclose(raw_f, mr._network_output(xf))
    mf.train()
    u, _ = mf(fine.test.inputs)
    u.square().sum().backward()
    grads = [p.grad for p in mf.net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # the original network is not touched
    assert all(p.grad is None for p in m.net.parameters())


def test_state_tendencies_on_the_test_mesh(tmp_path):
    """data.test_state_tendency_mesh = "test": the tendencies at solved states (later passes) are
    the test mesh's own at those states (batch 1 and 2), not the training mesh's interpolated;
    those at the inputs (the first pass) stay the training mesh's; end to end, the second pass's
    basis holds the test mesh's tendencies at the first pass's solved state; a bad value is refused."""
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import NetworkOnMesh, Task, transfer_method

    d = _ns_config(tmp_path, "gnn").to_dict()
    d["network"]["tendency_passes"] = 2
    coarse = Task(config_from_dict(d))
    fine = coarse.test_mesh_task()
    m = build_method("pihc", coarse)
    ms = transfer_method(m, fine, "train")
    fine.cfg.data.test_state_tendency_mesh = "test"
    mt = transfer_method(m, fine, "train")
    assert mt.network_mesh.state_tendency_mesh == "test" and ms.network_mesh.state_tendency_mesh == "train"
    L = coarse.n_levels
    for b in (1, 2):
        xf = fine.test.inputs[:b]
        states = torch.randn(b, L - 1, fine.n, dtype=torch.float64, generator=torch.Generator().manual_seed(b))
        own = fine.tendency_columns(xf, L, states).double()
        torch.testing.assert_close(mt.network_mesh.tendency_columns(xf, L, states), own, rtol=0, atol=0)
        assert not torch.allclose(ms.network_mesh.tendency_columns(xf, L, states), own, atol=1e-6)
        torch.testing.assert_close(mt.network_mesh.tendency_columns(xf, L), ms.network_mesh.tendency_columns(xf, L),
                                   rtol=0, atol=0)
        # end to end: the second pass's basis holds the test mesh's own tendencies at the first pass's state
        with torch.no_grad():
            B, _, _, _ = mt.basis(xf)
            params, u0 = fine.layer_args(xf)
            first = mt._after_layer(mt.layer, mt.layer(mt.network_output(xf), params, u0)[0])
            solved = fine.spec.state_from_lifted(fine.problem, first, params["initial_state"], fine.times)
        torch.testing.assert_close(B[..., d["network"]["n_basis"]:],
                                   mt._completed(fine.tendency_columns(xf, L, solved[:, :-1]).double()),
                                   rtol=1e-9, atol=1e-11)
    with pytest.raises(ConfigError, match="state_tendency_mesh"):
        NetworkOnMesh(coarse, fine, state_tendency_mesh="fine")
    d["data"]["test_state_tendency_mesh"] = "coarse"
    with pytest.raises(ConfigError, match="test_state_tendency_mesh"):
        config_from_dict(d)


def test_network_mesh_interpolation_gradcheck(tmp_path):
    """NetworkOnMesh's interpolation along the DOF axis of ``(batch, levels, n, cols)`` columns
    equals the dense product and is differentiable (float64 gradcheck)."""
    from femoe.train.task import NetworkOnMesh, Task, _torch_sparse

    coarse = Task(_ns_config(tmp_path, "deeponet"))
    fine = coarse.test_mesh_task()
    A = interpolation_operator(coarse.problem, fine.problem)
    P = _torch_sparse(A)
    x = torch.randn(2, 3, coarse.n, 2, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(NetworkOnMesh._interpolate(P, x),
                               torch.einsum("fc,blcn->blfn", torch.as_tensor(A.toarray()), x), rtol=1e-13, atol=1e-13)
    assert torch.autograd.gradcheck(lambda y: NetworkOnMesh._interpolate(P, y), (x,))


def test_test_network_mesh_is_checked(tmp_path):
    from femoe.train.methods import build_method
    from femoe.train.task import Task, transfer_method

    with pytest.raises(ConfigError, match="test_network_mesh"):
        _ns_config(tmp_path, "gnn", where="coarse")
    coarse = Task(_ns_config(tmp_path, "gnn"))
    with pytest.raises(ConfigError, match="network_mesh"):
        transfer_method(build_method("soft", coarse), coarse.test_mesh_task(), "fine")


def test_evaluate_on_test_mesh_reports_where_the_network_ran(tmp_path):
    from femoe.train.methods import build_method
    from femoe.train.run import evaluate_on_test_mesh
    from femoe.train.task import Task

    coarse = Task(_ns_config(tmp_path, "gnn"))
    torch.manual_seed(0)
    m = build_method("pihc", coarse)
    res = evaluate_on_test_mesh(coarse, m, batch_size=2)
    assert res["network_mesh"] == "train" and res["n_dofs"] == 4 * coarse.n
    assert len(res["rel_l2"]) == 2 and np.isfinite(res["rel_l2_mean"]) and res["rel_l2_mean"] > 0
