"""The graph a mesh GNN runs on (femoe.train.task.MeshGraph) and the Navier-Stokes node input."""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.helpers import dot, grad
from femoe.nn import MeshGNN, mesh_edges
from femoe.problem import Problem
from femoe.problems import get_problem
from femoe.train.task import MeshGraph


def test_a_one_field_space_is_its_own_graph():
    mesh = fe.MeshTri().refined(2).with_defaults()
    pb = Problem(fe.Basis(mesh, fe.ElementTriP1()), lambda u, v, w: dot(grad(u), grad(v)) - v,
                 dirichlet={"left": 0.0})
    g = MeshGraph.of(pb)
    assert g.n_nodes == pb.n and g.n_fields == 1 and g.period is None
    np.testing.assert_array_equal(g.edges, mesh_edges(pb.basis.element_dofs))
    out = torch.randn(2, pb.n, 3)
    assert torch.equal(g.scatter(out), out)


@pytest.fixture(scope="module")
def ns():
    spec = get_problem("navier_stokes_2d")
    return spec, spec.build(grid=8, n_steps=2, T=0.5, lift="paper")


def test_a_mixed_periodic_space_has_one_node_per_point_and_short_seam_edges(ns):
    _, pb = ns
    g = MeshGraph.of(pb)
    iw, ip = pb.basis.split_indices()
    assert g.n_nodes == iw.size == pb.n // 2 and g.n_fields == 2
    np.testing.assert_array_equal(g.field_dofs, np.stack([iw, ip]))
    np.testing.assert_allclose(g.period, [1.0, 1.0])
    # every edge joins neighbours: the wrapped edge vectors of the GNN are at most a cell diagonal
    net = MeshGNN(torch.as_tensor(g.coords, dtype=torch.float32), g.edges, n_outputs=2, period=g.period)
    h = 1.0 / 8
    lengths = torch.linalg.vector_norm(net.edge_attr[0], dim=-1)
    assert float(lengths.max()) <= h * 2**0.5 + 1e-6 and float(lengths.min()) >= h - 1e-6
    # without the wrap, the seam edges would span the box
    raw = MeshGNN(torch.as_tensor(g.coords, dtype=torch.float32), g.edges, n_outputs=2)
    assert float(torch.linalg.vector_norm(raw.edge_attr[0], dim=-1).max()) > 0.5
    # node outputs (field-major channels) land on each field's DOFs
    out = torch.zeros(1, 2, g.n_nodes, 2 * 3)
    out[..., :3] = torch.arange(g.n_nodes, dtype=torch.float32)[:, None]
    out[..., 3:] = -1.0
    B = g.scatter(out)
    assert B.shape == (1, 2, pb.n, 3)
    torch.testing.assert_close(B[0, 0, iw, 0], torch.arange(g.n_nodes, dtype=torch.float32))
    assert float(B[0, :, ip].max()) == -1.0


def test_navier_stokes_node_features_are_vorticity_streamfunction_and_velocity():
    spec = get_problem("navier_stokes_2d")
    pb = spec.build(grid=32, n_steps=2, T=0.5)
    iw, _ = pb.basis.split_indices()
    x, y = pb.doflocs[:, iw]
    omega = np.sin(2 * np.pi * x)[None]  # psi = sin(2 pi x) / (4 pi^2): u = psi_y = 0, v = -psi_x
    f = spec.node_features(pb, omega)
    assert f.shape == (1, iw.size, spec.node_channels)
    np.testing.assert_allclose(f[0, :, 0], omega[0], atol=1e-12)
    scale = np.abs(np.cos(2 * np.pi * x)).max() / (2 * np.pi)
    np.testing.assert_allclose(f[0, :, 1] / 40.0, np.sin(2 * np.pi * x) / (4 * np.pi**2), atol=0.02 * scale)
    np.testing.assert_allclose(f[0, :, 2] / 15.0, 0.0, atol=1e-10)
    np.testing.assert_allclose(f[0, :, 3] / 15.0, -np.cos(2 * np.pi * x) / (2 * np.pi), atol=0.03 * scale)
