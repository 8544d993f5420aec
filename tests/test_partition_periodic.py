"""Partitions of a periodic mesh (scikit-fem's MeshDG): the experts are compact pieces of the
torus, with interiors of their own, as on an ordinary mesh."""

from __future__ import annotations

import numpy as np
import pytest

from femoe.partition import partition_experts
from femoe.partition._graph import centroids


def _periodic(grid):
    from femoe.problems import get_problem

    return get_problem("navier_stokes_2d").build(grid=grid, n_steps=1, T=0.1)


def test_centroids_of_a_periodic_mesh_are_its_elements_centroids():
    pb = _periodic(8)
    orig = pb.orig_mesh  # the same triangles before the sides were identified
    np.testing.assert_allclose(centroids(pb.mesh), orig.p[:, orig.t].mean(axis=1), atol=1e-14)


@pytest.mark.parametrize("method", ["rcb", "slab", "metis"])
def test_coordinate_partitions_of_a_periodic_mesh_are_balanced_blocks(method):
    pb = _periodic(16)
    part = partition_experts(pb.basis, 4, method)
    c = centroids(pb.mesh)
    sizes = np.bincount(part.element_part, minlength=4)
    assert sizes.min() >= 0.8 * sizes.max()
    # every expert has interior DOFs of its own (patch mode and the MoE need them)
    assert min(len(i) for i in part.interior) > 0.5 * pb.n / 4 / 2
    if method != "metis":  # geometric cuts: each expert's elements fill a box of a quarter of the area
        for e in part.elements:
            lo, hi = c[:, e].min(axis=1), c[:, e].max(axis=1)
            assert np.prod(hi - lo) < 0.3
