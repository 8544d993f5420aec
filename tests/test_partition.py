"""Element partitioners and expert index sets, checked against brute-force definitions."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import skfem

from femoe.errors import ConfigError, MissingDependencyError, PartitionError
from femoe.partition import (
    ExpertPartition,
    available_methods,
    dof_weights,
    dual_graph,
    partition_elements,
    partition_experts,
    time_windows,
)

HAS_METIS = True
try:
    import pymetis as _pymetis  # noqa: F401
except ImportError:
    HAS_METIS = False

needs_metis = pytest.mark.skipif(not HAS_METIS, reason="pymetis is not installed")


# --- brute-force references ---------------------------------------------------------------
def brute_force(basis, part, dirichlet):
    """Owner, interface, owned, local, interior by loops over DOFs and elements."""
    dofs = np.asarray(basis.element_dofs)
    k = part.max() + 1
    star = [[] for _ in range(basis.N)]
    for e in range(dofs.shape[1]):
        for d in dofs[:, e]:
            star[d].append(e)
    owner = np.empty(basis.N, dtype=int)
    interface = []
    for d in range(basis.N):
        counts = np.bincount(part[star[d]], minlength=k)
        owner[d] = int(np.flatnonzero(counts == counts.max())[0])
        if np.count_nonzero(counts) > 1:
            interface.append(d)
    dset = set(int(x) for x in dirichlet)
    owned = [sorted(d for d in range(basis.N) if owner[d] == j and d not in dset) for j in range(k)]
    local = []
    for j in range(k):
        touching = {e for d in owned[j] for e in star[d]}
        local.append(sorted({int(d) for e in touching for d in dofs[:, e]}))
    interior = [sorted(set(owned[j]) - set(interface)) for j in range(k)]
    return owner, interface, owned, local, interior


def check_against_brute_force(basis, ep: ExpertPartition, dirichlet):
    owner, interface, owned, local, interior = brute_force(basis, ep.element_part, dirichlet)
    np.testing.assert_array_equal(ep.owner, owner)
    np.testing.assert_array_equal(ep.interface, interface)
    for j in range(ep.k):
        np.testing.assert_array_equal(ep.owned[j], owned[j])
        np.testing.assert_array_equal(ep.local[j], local[j])
        np.testing.assert_array_equal(ep.interior[j], interior[j])
        np.testing.assert_array_equal(ep.elements[j], np.flatnonzero(ep.element_part == j))


@pytest.fixture(scope="module")
def square():
    return skfem.MeshTri().refined(6)  # 8192 triangles, 4225 nodes


# --- partitioners -------------------------------------------------------------------------
def test_registry_lists_methods():
    assert {"metis", "rcb", "random", "slab", "grid", "auto"} <= set(available_methods())


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"Unknown partition method 'kmeans'.*'rcb'"):
        partition_elements(skfem.MeshTri(), 2, method="kmeans")


@pytest.mark.parametrize("k", [0, -3, 2.5, True, "2"])
def test_bad_k_raises(k):
    with pytest.raises(PartitionError, match="k"):
        partition_elements(skfem.MeshTri().refined(1), k, method="rcb")


def test_k_above_element_count_raises_helpfully():
    mesh = skfem.MeshTri().refined(1)  # 8 elements
    with pytest.raises(PartitionError, match="only 8 elements"):
        partition_elements(mesh, 9, method="rcb")


@pytest.mark.parametrize("method", ["rcb", "random", pytest.param("metis", marks=needs_metis)])
def test_k_equal_to_element_count_uses_every_id(method):
    mesh = skfem.MeshTri().refined(2)  # 32 elements
    part = partition_elements(mesh, 32, method=method)
    np.testing.assert_array_equal(np.sort(part), np.arange(32))


@pytest.mark.parametrize("method", ["metis", "rcb"])
@pytest.mark.parametrize("k", [2, 4, 8])
def test_balance_within_ten_percent(square, method, k):
    if method == "metis" and not HAS_METIS:
        pytest.skip("pymetis is not installed")
    basis = skfem.Basis(square, skfem.ElementTriP1())
    ep = partition_experts(basis, k, method, dirichlet=basis.get_dofs())
    stats = ep.stats()
    assert stats["imbalance"] <= 1.10, stats["owned"]
    assert sorted(set(ep.element_part.tolist())) == list(range(k))
    # a spatial partitioner cuts far fewer facets than a random one
    rand = partition_experts(basis, k, "random", dirichlet=basis.get_dofs())
    assert ep.edge_cut < 0.2 * rand.edge_cut


@pytest.mark.parametrize("k", [3, 5, 7])
def test_rcb_any_k_balances_given_weights(square, k):
    x = square.p[:, square.t].mean(axis=1)[0]
    weights = 1.0 + 4.0 * x  # strongly non-uniform
    before = weights.copy()
    part = partition_elements(square, k, method="rcb", weights=weights)
    np.testing.assert_array_equal(weights, before)  # caller's array untouched
    load = np.bincount(part, weights=weights, minlength=k)
    assert load.max() / load.mean() < 1.01
    assert np.all(np.bincount(part, minlength=k) > 0)


def test_rcb_two_parts_is_a_straight_cut():
    mesh = skfem.MeshQuad().refined(3).scaled([4.0, 1.0])  # long in x: cut across x
    part = partition_elements(mesh, 2, method="rcb")
    cx = mesh.p[:, mesh.t].mean(axis=1)[0]
    assert cx[part == 0].max() < cx[part == 1].min()


def test_auto_falls_back_to_rcb_without_pymetis(square, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "pymetis", None)  # makes `import pymetis` fail
    with caplog.at_level(logging.INFO, logger="femoe.partition"):
        part = partition_elements(square, 4, method="auto")
    assert "'rcb'" in caplog.text
    np.testing.assert_array_equal(part, partition_elements(square, 4, method="rcb"))
    with pytest.raises(MissingDependencyError, match="pip install pymetis"):
        partition_elements(square, 4, method="metis")
    with pytest.raises(ImportError):  # generic handlers still work
        partition_elements(square, 4, method="metis")


@needs_metis
def test_auto_uses_metis_when_available(square, caplog):
    with caplog.at_level(logging.INFO, logger="femoe.partition"):
        part = partition_elements(square, 4, method="auto")
    assert "'metis'" in caplog.text
    np.testing.assert_array_equal(part, partition_elements(square, 4, method="metis"))


def test_random_is_reproducible_and_seed_dependent(square):
    a = partition_elements(square, 6, method="random", seed=1)
    b = partition_elements(square, 6, method="random", seed=1)
    c = partition_elements(square, 6, method="random", seed=2)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a != c) > 0.5
    counts = np.bincount(a, minlength=6)
    assert counts.max() - counts.min() <= 1
    # scattered: far more cut facets than a spatial split
    xadj, adjncy = dual_graph(square)
    rows = np.repeat(np.arange(xadj.size - 1), np.diff(xadj))
    assert np.mean(a[rows] != a[adjncy]) > 0.5


def test_slab_in_1d_gives_contiguous_ordered_patches():
    mesh = skfem.MeshLine().refined(6)  # 64 intervals, nodes not in x order after refining
    k = 5
    part = partition_elements(mesh, k, method="slab")
    cx = mesh.p[0, mesh.t].mean(axis=0)
    order = np.argsort(cx)
    assert np.all(np.diff(part[order]) >= 0)  # ids increase along x: contiguous patches
    np.testing.assert_array_equal(np.unique(part), np.arange(k))
    # P1 on a line: exactly the k-1 cut nodes are interface DOFs, each between two patches
    ep = ExpertPartition.from_basis(skfem.Basis(mesh, skfem.ElementLineP1()), part)
    assert ep.interface.size == k - 1
    assert ep.edge_cut == k - 1
    # ... and they sit at the equal-width slab boundaries j/k, up to one element
    cuts = np.sort(mesh.p[0, ep.interface])
    assert np.all(np.abs(cuts - np.arange(1, k) / k) <= 1 / 64)


def test_slab_axis_and_empty_slab():
    mesh = skfem.MeshQuad().refined(3)
    part = partition_elements(mesh, 4, method="grid", axis=1)
    cy = mesh.p[1, mesh.t].mean(axis=0)
    np.testing.assert_array_equal(part, np.floor(cy * 4).astype(int))
    with pytest.raises(ConfigError, match="axis"):
        partition_elements(mesh, 4, method="slab", axis=2)
    coarse = skfem.MeshLine(np.array([0.0, 0.1, 0.2, 1.0]))  # centroids 0.05, 0.15, 0.6
    with pytest.raises(PartitionError, match=r"experts \[2\] without elements.*rcb"):
        partition_elements(coarse, 3, method="slab")


def test_one_heavy_element_still_leaves_no_expert_empty(square):
    weights = np.ones(square.t.shape[1])
    weights[0] = 1e6
    for method in ("rcb", "random"):
        part = partition_elements(square, 3, method=method, weights=weights)
        assert np.all(np.bincount(part, minlength=3) > 0)


def test_empty_metis_parts_are_filled_from_the_largest():
    from femoe.partition._methods import _fill_empty_parts

    mesh = skfem.MeshTri().refined(2)
    xadj, adjncy = dual_graph(mesh)
    part = np.zeros(mesh.t.shape[1], dtype=np.int64)
    part[:4] = 1  # experts 2 and 3 empty
    _fill_empty_parts(part, 4, xadj, adjncy)
    counts = np.bincount(part, minlength=4)
    assert counts.tolist() == [26, 4, 1, 1]


def test_bad_weights_raise(square):
    with pytest.raises(PartitionError, match="one entry per element"):
        partition_elements(square, 2, method="rcb", weights=np.ones(3))
    with pytest.raises(PartitionError, match="positive"):
        partition_elements(square, 2, method="rcb", weights=-np.ones(square.t.shape[1]))


# --- expert index sets --------------------------------------------------------------------
@pytest.mark.parametrize("method", ["rcb", "random", "slab", pytest.param("metis", marks=needs_metis)])
@pytest.mark.parametrize("element", [skfem.ElementTriP1, skfem.ElementTriP2])
def test_index_sets_match_brute_force(method, element):
    mesh = skfem.MeshTri().refined(2)
    basis = skfem.Basis(mesh, element())
    dirichlet = basis.get_dofs().all()
    ep = partition_experts(basis, 3, method, dirichlet=dirichlet, seed=4)
    check_against_brute_force(basis, ep, dirichlet)


def test_index_sets_on_quadratic_quads_without_dirichlet():
    mesh = skfem.MeshQuad().refined(2)
    basis = skfem.Basis(mesh, skfem.ElementQuad2())
    ep = partition_experts(basis, 4, "rcb")
    check_against_brute_force(basis, ep, np.zeros(0, dtype=int))


def test_ties_go_to_the_lowest_expert():
    # two triangles sharing the diagonal: every shared DOF is a 1-1 tie
    mesh = skfem.MeshTri()
    basis = skfem.Basis(mesh, skfem.ElementTriP1())
    ep = ExpertPartition.from_basis(basis, np.array([1, 0]))
    shared = np.intersect1d(mesh.t[:, 0], mesh.t[:, 1])
    assert np.all(ep.owner[shared] == 0)
    np.testing.assert_array_equal(ep.interface, np.sort(shared))


@pytest.mark.parametrize("k", [1, 2, 5])
def test_ownership_covers_all_dofs_once(square, k):
    basis = skfem.Basis(square, skfem.ElementTriP2())
    dirichlet = basis.get_dofs().all()
    ep = partition_experts(basis, k, "rcb", dirichlet=dirichlet)
    everything = np.concatenate(list(ep.owned) + [ep.dirichlet])
    np.testing.assert_array_equal(np.sort(everything), np.arange(basis.N))  # disjoint + cover
    assert ep.owner.shape == (basis.N,) and set(np.unique(ep.owner)) == set(range(k))
    for j in range(k):
        assert np.all(ep.owner[ep.owned[j]] == j)
        # every DOF of every element touching O_j is in L_j
        touching = np.flatnonzero(np.isin(basis.element_dofs, ep.owned[j]).any(axis=0))
        assert np.all(np.isin(basis.element_dofs[:, touching], ep.local[j]))
        assert np.all(np.isin(ep.owned[j], ep.local[j]))
        assert np.all(np.diff(ep.local[j]) > 0)
        np.testing.assert_array_equal(ep.halo[j], np.setdiff1d(ep.local[j], ep.owned[j]))
    if k == 1:
        assert ep.interface.size == 0 and ep.edge_cut == 0
        np.testing.assert_array_equal(ep.local[0], np.arange(basis.N))
        np.testing.assert_array_equal(ep.interior[0], ep.owned[0])


def test_edge_cut_counts_shared_facets(square):
    basis = skfem.Basis(square, skfem.ElementTriP1())
    ep = partition_experts(basis, 4, "rcb")
    f2t = square.f2t[:, square.f2t[1] >= 0]
    assert ep.edge_cut == int(np.sum(ep.element_part[f2t[0]] != ep.element_part[f2t[1]]))


def test_padded_indices_gather_all_experts_at_once(square):
    basis = skfem.Basis(square, skfem.ElementTriP1())
    ep = partition_experts(basis, 3, "rcb", dirichlet=basis.get_dofs())
    field = np.random.default_rng(0).normal(size=basis.N)
    owned_vals = field[ep.owned_padded]
    local_vals = field[ep.local_padded]
    assert ep.owned_padded.shape == (3, max(o.size for o in ep.owned))
    for j in range(3):
        np.testing.assert_array_equal(owned_vals[j][ep.owned_mask[j]], field[ep.owned[j]])
        np.testing.assert_array_equal(local_vals[j][ep.local_mask[j]], field[ep.local[j]])
    # owned values read out of the local gather through owned_in_local_padded
    via_local = np.take_along_axis(local_vals, ep.owned_in_local_padded, axis=1)
    np.testing.assert_array_equal(via_local[ep.owned_mask], owned_vals[ep.owned_mask])
    with pytest.raises(ValueError):
        ep.owned_padded[0, 0] = 1  # read-only: a shared partition cannot be corrupted


def test_dof_weights_sum_to_free_dofs(square):
    basis = skfem.Basis(square, skfem.ElementTriP2())
    dirichlet = basis.get_dofs().all()
    w = dof_weights(basis, dirichlet)
    assert w.shape == (square.t.shape[1],) and np.all(w > 0)
    np.testing.assert_allclose(w.sum(), basis.N - dirichlet.size, rtol=1e-12)


def test_invalid_inputs_to_from_basis():
    basis = skfem.Basis(skfem.MeshTri().refined(1), skfem.ElementTriP1())
    with pytest.raises(PartitionError, match="shape"):
        ExpertPartition.from_basis(basis, np.zeros(3, dtype=int))
    with pytest.raises(PartitionError, match=r"experts \[1\] have no elements"):
        ExpertPartition.from_basis(basis, np.array([0, 2, 0, 2, 0, 2, 0, 2]))
    with pytest.raises(PartitionError, match="dirichlet"):
        ExpertPartition.from_basis(basis, np.zeros(8, dtype=int), dirichlet=[0, basis.N])


def test_stats_are_consistent(square):
    basis = skfem.Basis(square, skfem.ElementTriP1())
    ep = partition_experts(basis, 4, "rcb", dirichlet=basis.get_dofs())
    s = ep.stats()
    assert sum(s["owned"]) + s["n_dirichlet"] == s["n_dofs"]
    assert sum(s["elements"]) == s["n_elements"]
    assert s["imbalance"] == pytest.approx(max(s["owned"]) / np.mean(s["owned"]))
    assert s["interface"] == ep.interface.size > 0
    assert all(i <= o for i, o in zip(s["interior"], s["owned"]))


# --- time windows -------------------------------------------------------------------------
@pytest.mark.parametrize("n_steps,n_windows", [(10, 3), (7, 7), (100, 1), (5, 2)])
def test_time_windows_are_contiguous_and_balanced(n_steps, n_windows):
    w = time_windows(n_steps, n_windows)
    assert len(w) == n_windows and w[0][0] == 0 and w[-1][1] == n_steps
    assert all(a[1] == b[0] for a, b in zip(w, w[1:]))
    sizes = [stop - start for start, stop in w]
    assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("n_steps,n_windows", [(3, 4), (3, 0), (3, 1.5)])
def test_time_windows_reject_bad_counts(n_steps, n_windows):
    with pytest.raises(PartitionError, match="n_windows"):
        time_windows(n_steps, n_windows)
