"""Bad inputs to the constraint layers are named errors, never a silent reinterpretation.

Table-driven over the three layers that take an initial condition (PI-HC, PI-HC-MoE, patch
mode): a flat ``u0`` of ``2 n`` values is not two samples, a batch that matches neither 1 nor the
basis is refused, and a partition of another mesh (or of a mesh with the same counts) is
refused instead of returning "converged, residual 0".
"""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.errors import ConfigError, NonFiniteError, PartitionError, ShapeError
from femoe.experts import HardConstraintMoE, PatchConstraint
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.partition import ExpertPartition, partition_experts

F64 = torch.float64


@pytest.fixture
def heat(make_heat):
    """u_t = 0.05 u_xx, implicit Euler, u = 1 on "left", 16 cells."""
    return make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)), 4, theta=1.0, dirichlet={"left": 1.0})


@pytest.fixture
def poisson(make_square):
    """-lap u = 1, u = 0 on "left" and "right", 32 elements."""
    return make_square("unit_load", 2)


LAYERS = {
    "pihc": lambda pb: HardConstraint(pb, dt=0.1),
    "moe": lambda pb: HardConstraintMoE(pb, 2, partition="slab", dt=0.1),
    "moe_coarse": lambda pb: HardConstraintMoE(pb, 2, partition="slab", dt=0.1, coarse=True),
    "patch": lambda pb: PatchConstraint(pb, 2, partition="slab", dt=0.1),
}


def _input(kind, pb, batch):
    g = torch.Generator().manual_seed(0)
    if kind == "patch":
        return torch.rand(batch, 3, pb.n, dtype=F64, generator=g)
    return torch.randn(batch, 3, pb.n, 2, dtype=F64, generator=g)


# (description, batch of the basis, u0 factory from n, error, message fragment)
BAD_U0 = [
    ("two samples flattened", 2, lambda n: torch.rand(2 * n, dtype=F64), ShapeError, r"reshape it to \(2, "),
    ("one sample flattened twice, basis batch 1", 1, lambda n: torch.rand(2 * n, dtype=F64), ShapeError,
     r"received \("),
    ("batch 3 for a basis of batch 2", 2, lambda n: torch.rand(3, n, dtype=F64), ShapeError, r"\(2, \d+\), \(1, "),
    ("one value too many", 1, lambda n: torch.rand(1, n + 1, dtype=F64), ShapeError, r"DOFs\); received \(1, "),
    ("three axes", 1, lambda n: torch.rand(1, 1, n, dtype=F64), ShapeError, "u0 must have shape"),
    ("float32 beside a float64 basis", 1, lambda n: torch.rand(n), ShapeError, "dtype"),
    ("integers", 1, lambda n: torch.ones(n, dtype=torch.int64), ShapeError, "float32 or float64"),
    ("a list", 1, lambda n: [0.0] * n, ShapeError, "torch.Tensor"),
    ("NaN", 1, lambda n: torch.full((n,), float("nan"), dtype=F64), NonFiniteError, "u0"),
]


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("case", BAD_U0, ids=[c[0] for c in BAD_U0])
def test_bad_initial_conditions(kind, case, heat):
    _, batch, make, error, match = case
    pb = heat
    layer = LAYERS[kind](pb)
    with pytest.raises(error, match=match):
        layer(_input(kind, pb, batch), u0=make(pb.n))


@pytest.mark.parametrize("kind", sorted(LAYERS))
@pytest.mark.parametrize("shape", ["n", "1n", "bn"])
def test_good_initial_conditions_broadcast(kind, shape, heat):
    pb = heat
    layer = LAYERS[kind](pb)
    u0 = torch.rand(2, pb.n, dtype=F64, generator=torch.Generator().manual_seed(1))
    ref = {"n": u0[0], "1n": u0[:1], "bn": u0}[shape]
    u, _ = layer(_input(kind, pb, 2), u0=ref)
    assert u.shape[:2] == (2, 3)
    if kind == "patch":  # level 0 is the initial condition itself
        torch.testing.assert_close(u[:, 0], ref.expand(2, -1))


def _foreign_partitions(pb, other):
    # other: a problem on another mesh (other sizes)
    yield "another mesh", partition_experts(other.basis, 2, "rcb"), "built for another mesh"
    # same mesh, another element order: same sizes, other ownership
    mesh = pb.mesh
    perm = np.random.default_rng(0).permutation(mesh.nelements)
    shuffled = fe.MeshTri(mesh.p, mesh.t[:, perm])
    part = partition_experts(fe.Basis(shuffled, fe.ElementTriP1()), 2, "rcb")
    yield "same sizes, other ownership", part, "owners"


@pytest.mark.parametrize("layer_cls", [HardConstraintMoE, PatchConstraint])
def test_partition_of_another_mesh_is_refused(layer_cls, poisson, make_square):
    pb = poisson
    for _, part, match in _foreign_partitions(pb, make_square("unit_load", 3)):
        with pytest.raises(PartitionError, match=match):
            layer_cls(pb, part)


@pytest.mark.parametrize("layer_cls", [HardConstraintMoE, PatchConstraint])
def test_own_partition_without_dirichlet_is_accepted(layer_cls, poisson):
    """A partition of the same basis built without the Dirichlet DOFs is the same ownership:
    accepted, and rebuilt with the problem's Dirichlet DOFs."""
    pb = poisson
    part = partition_experts(pb.basis, 2, "rcb")
    layer = layer_cls(pb, part)
    assert isinstance(layer.partition, ExpertPartition)
    np.testing.assert_array_equal(layer.partition.owner, part.owner)
    np.testing.assert_array_equal(layer.partition.dirichlet, pb.dirichlet_dofs)


@pytest.mark.parametrize("layer_cls", [HardConstraintMoE, PatchConstraint])
@pytest.mark.parametrize("experts", ["two", 2.5, 0, -1, True, None])
def test_bad_number_of_experts(layer_cls, experts, poisson):
    with pytest.raises(ConfigError, match="experts must be a positive integer"):
        layer_cls(poisson, experts)


@pytest.mark.parametrize("name", ["initial", "u_old", "__initial__", "__u_old__", "__coarse_field__",
                                  "__patch_fixed__", "__patch_old__"])
@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_a_parameter_named_like_a_state_input_is_a_parameter(make_heat, layer, name):
    """The layers pass their state inputs (``u0``, the previous level, the two-level experts'
    coarse field, patch mode's held values) to their models under
    :class:`femoe.layers._state.StateKey` keys, which are not strings: a problem parameter of any
    name, the state inputs' own names and every old reserved string included, is read as the
    parameter it is and gets its gradient (PI-HC, one- and two-level experts, patch mode)."""
    from femoe.layers._state import INITIAL, StateKey, parameters_only

    pb = make_heat(lambda u, v, w: w[name] * dot(grad(u), grad(v)), 4, theta=1.0, dirichlet={"left": 1.0},
                   **{name: 0.05})
    m = LAYERS[layer](pb)
    x = torch.as_tensor(pb.doflocs[0])
    u0 = (0.2 * torch.sin(3 * x)).unsqueeze(0)
    steps = 3
    B = torch.randn(1, steps + 1, pb.n, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    if layer == "patch":
        B = B[..., 0]
    D = torch.tensor(0.05, dtype=F64, requires_grad=True)
    u_default, _ = m(B, None, u0)
    u_same, _ = m(B, {name: D}, u0)
    u_other, _ = m(B, {name: torch.tensor(0.2, dtype=F64)}, u0)
    torch.testing.assert_close(u_same, u_default, rtol=1e-10, atol=1e-12)
    assert float((u_other - u_default).abs().max()) > 1e-6
    (g,) = torch.autograd.grad(u_same.square().sum(), D)
    assert torch.isfinite(g) and float(g.abs()) > 0
    assert INITIAL != "initial" and isinstance(INITIAL, StateKey)
    assert parameters_only({name: D, INITIAL: u0}) == {name: D}
