"""A PatchUnion (``Problem.restrict``) is built without ``Problem.__init__``: every attribute a
Problem sets must either be set on the union or refuse clearly, so that a field added to
Problem cannot go missing (or be shared with the parent's DOF numbers) unnoticed."""

import numpy as np
import pytest
import skfem as fe

from femoe.errors import ProblemError
from femoe.helpers import dot, grad
from femoe.problem import PatchUnion, Problem


@pytest.mark.parametrize("mixed", [False, True])
def test_every_problem_attribute_is_set_on_the_union_or_refused(mixed):
    mesh = fe.MeshTri().refined(2).with_defaults()
    if mixed:
        basis = fe.Basis(mesh, fe.ElementVector(fe.ElementTriP1()))
        pb = Problem(basis, lambda u, v, w: fe.helpers.ddot(grad(u), grad(v)) - v[0], dirichlet={"left": 0.0},
                     facets={"top": lambda u, v, w: dot(u, v)})
    else:
        basis = fe.Basis(mesh, fe.ElementTriP1())
        pb = Problem(basis, lambda u, v, w: dot(grad(u), grad(v)) - v, dirichlet={"left": 0.0},
                     facets={"top": lambda u, v, w: u * v}, storage="mass")
    union = pb.restrict([np.arange(8), np.arange(8, 20)])
    missing = set(vars(pb)) - set(vars(union))
    assert missing == set(PatchUnion._PARENT_ONLY), missing
    for name in PatchUnion._PARENT_ONLY:
        with pytest.raises(ProblemError, match="patch union"):
            getattr(union, name)
    with pytest.raises(ProblemError, match="patch union"):
        union.fields  # goes through the parent-only field table
    with pytest.raises(AttributeError):
        union.no_such_attribute
