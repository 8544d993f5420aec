"""Reference networks: shapes, mesh-agnostic evaluation, gradient flow, input validation."""

import pytest
import skfem as fe
import torch

from femoe.errors import ShapeError
from femoe.nn import DeepONet, MeshGNN, mesh_edges


def test_deeponet_shapes_and_point_independence():
    torch.manual_seed(0)
    net = DeepONet(n_sensors=8, coord_dim=2, n_outputs=5, width=16, depth=2)
    a = torch.randn(3, 8)
    pts = torch.rand(40, 2)
    out = net(a, pts)
    assert out.shape == (3, 40, 5)
    # mesh-agnostic: evaluating on a subset of points gives the same values there
    torch.testing.assert_close(net(a, pts[::3]), out[:, ::3])
    # the output depends on the input function (the branch is used)
    assert (net(a + 1.0, pts) - out).abs().max() > 1e-4
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    with pytest.raises(ShapeError, match="n_sensors|shape"):
        net(torch.randn(3, 7), pts)
    with pytest.raises(ShapeError, match="points"):
        net(a, torch.rand(40, 3))


def test_mesh_edges_connect_dofs_sharing_an_element():
    mesh = fe.MeshTri().refined(1)
    basis = fe.Basis(mesh, fe.ElementTriP1())
    e = mesh_edges(basis.element_dofs)
    pairs = set(map(tuple, e.T))
    for tri in mesh.t.T:
        for i in tri:
            for j in tri:
                if i != j:
                    assert (i, j) in pairs
    # no pair that does not share an element
    assert len(pairs) == 2 * mesh.facets.shape[1]


def test_mesh_gnn_steady_and_time_dependent():
    torch.manual_seed(0)
    mesh = fe.MeshTri().refined(2)
    basis = fe.Basis(mesh, fe.ElementTriP1())
    coords = torch.tensor(basis.doflocs.T, dtype=torch.float32)
    net = MeshGNN(coords, mesh_edges(basis.element_dofs), n_outputs=4, width=16, layers=2)
    a = torch.randn(2, basis.N)
    assert net(a).shape == (2, basis.N, 4)
    net_t = MeshGNN(coords, mesh_edges(basis.element_dofs), n_outputs=3, width=16, layers=2, time_bounds=(0.0, 1.0))
    out = net_t(a, torch.linspace(0, 1, 5))
    assert out.shape == (2, 5, basis.N, 3)
    out.square().mean().backward()
    assert all(p.grad is not None for p in net_t.parameters())
    # message passing makes a node depend on its neighbours' inputs
    a2 = a.clone()
    a2[:, 0] += 1.0
    d = (net(a2) - net(a)).abs().sum(-1)[0]
    nbrs = set(mesh_edges(basis.element_dofs)[1][mesh_edges(basis.element_dofs)[0] == 0])
    assert all(d[j] > 0 for j in nbrs)
    with pytest.raises(ShapeError):
        net(torch.randn(2, basis.N + 1))
