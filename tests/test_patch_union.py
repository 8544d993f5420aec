"""A PatchUnion (``Problem.restrict``) holds its parent Problem and its own pieces; both are
:class:`~femoe.problem.WeakForm` and run its ``__init__``. Every attribute a Problem sets must
either be set on the union or refuse clearly, and every public member of a Problem must resolve
on the union to the union's own value, the parent's, or a clear refusal, so that a field added to
Problem cannot go missing (or be shared with the parent's DOF numbers) unnoticed."""

import numpy as np
import pytest
import skfem as fe
import torch

from femoe.errors import ProblemError
from femoe.helpers import dot, grad
from femoe.problem import PatchUnion, Problem, WeakForm


def _problem(mixed: bool) -> Problem:
    mesh = fe.MeshTri().refined(2).with_defaults()
    if mixed:
        basis = fe.Basis(mesh, fe.ElementVector(fe.ElementTriP1()))
        return Problem(basis, lambda u, v, w: fe.helpers.ddot(grad(u), grad(v)) - v[0], dirichlet={"left": 0.0},
                       facets={"top": lambda u, v, w: dot(u, v)})
    basis = fe.Basis(mesh, fe.ElementTriP1())
    return Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - v, dirichlet={"left": 0.0},
                   facets={"top": lambda u, v, w: u * v}, storage="mass")


SETS = [np.arange(8), np.arange(8, 20)]


@pytest.mark.parametrize("mixed", [False, True])
def test_every_problem_attribute_is_set_on_the_union_or_refused(mixed):
    pb = _problem(mixed)
    union = pb.restrict(SETS)
    missing = set(vars(pb)) - set(vars(union))
    assert missing == set(PatchUnion._PARENT_ONLY), missing
    for name in PatchUnion._PARENT_ONLY:
        with pytest.raises(ProblemError, match="patch union"):
            getattr(union, name)
    with pytest.raises(ProblemError, match="patch union"):
        union.fields  # goes through the parent-only field table
    with pytest.raises(AttributeError):
        union.no_such_attribute


def _public(obj) -> set[str]:
    return {n for n in dir(obj) if not n.startswith("_")}


@pytest.mark.parametrize("mixed", [False, True])
def test_every_public_member_of_problem_resolves_on_the_union_or_refuses(mixed):
    """Each public member of a Problem is, on its union, either shared through WeakForm (the
    union's own value, built for its DOFs, or the parent's forms and data that WeakForm.__init__
    was given), the union's own override, or parent-only and refused;
    a member added to Problem alone fails here until the union decides what it means."""
    pb = _problem(mixed)
    union = pb.restrict(SETS)
    assert isinstance(pb, WeakForm) and isinstance(union, WeakForm) and not isinstance(union, Problem)
    members = _public(pb)
    parent_only = set(PatchUnion._PARENT_ONLY_MEMBERS)
    shared = _public(WeakForm)  # methods and properties of the shared base
    own = set(vars(PatchUnion)) | set(vars(union))  # the union's overrides and instance attributes
    assert parent_only <= members
    undecided = members - parent_only - shared - own
    assert not undecided, f"public members of Problem the union does not decide on: {sorted(undecided)}"
    for name in sorted(members - parent_only):
        getattr(union, name)  # resolves
    for name in sorted(parent_only):
        with pytest.raises(ProblemError, match="patch union"):
            getattr(union, name)

    # the union's own values, for its DOFs ...
    assert union.n == sum(d.size for d in union.local_dofs) != pb.n
    assert union.pattern.shape == (union.n, union.n) and union.pattern is not pb.pattern
    assert union.mass_diagonal.shape == union.row_scale().shape == (union.n,)
    np.testing.assert_array_equal(union.dirichlet_dofs,
                                  np.nonzero(np.isin(union.union_to_global, pb.dirichlet_dofs))[0])
    np.testing.assert_array_equal(np.sort(np.concatenate([union.dirichlet_dofs, union.free_dofs])), np.arange(union.n))
    np.testing.assert_array_equal(union.doflocs, pb.doflocs[:, union.union_to_global])
    # ... and the parent's where they are the same objects (forms, data, time scheme)
    for name in ("name", "basis", "mesh", "scheme", "theta", "defaults", "coefficients", "residual_integrand",
                 "storage_integrand", "is_time_dependent"):
        assert getattr(union, name) is getattr(pb, name) or getattr(union, name) == getattr(pb, name), name
    # the parent's Dirichlet values, at the union's Dirichlet DOFs
    g = pb.dirichlet_values()
    gu = union.dirichlet_values()
    pos = np.searchsorted(pb.dirichlet_dofs, union.union_to_global[union.dirichlet_dofs])
    assert torch.equal(gu, g[:, pos])


def test_a_field_added_to_the_shared_base_reaches_the_union(monkeypatch):
    """Problem and PatchUnion both run WeakForm.__init__ (composition, no attribute copying):
    a field the shared base sets is set on the union as well, without touching PatchUnion."""
    init = WeakForm.__init__

    def with_extra(self, **pieces):
        init(self, **pieces)
        self.extra_field = ("set by WeakForm.__init__", self.n)

    monkeypatch.setattr(WeakForm, "__init__", with_extra)
    pb = _problem(False)
    union = pb.restrict(SETS)
    assert pb.extra_field == ("set by WeakForm.__init__", pb.n)
    assert union.extra_field == ("set by WeakForm.__init__", union.n)


def test_a_field_added_to_problem_alone_is_caught():
    """A field set only by Problem.__init__ is missing on the union: the attribute check above
    names it instead of letting the union fall back on something wrong."""

    class Extended(Problem):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            self.only_on_problem = 1

    mesh = fe.MeshTri().refined(2).with_defaults()
    pb = Extended(fe.Basis(mesh, fe.ElementTriP1()), lambda u, v, w: dot(grad(u), grad(v)) - v,
                  dirichlet={"left": 0.0})
    union = pb.restrict(SETS)
    missing = set(vars(pb)) - set(vars(union))
    assert missing == set(PatchUnion._PARENT_ONLY) | {"only_on_problem"}
    with pytest.raises(AttributeError):
        union.only_on_problem
