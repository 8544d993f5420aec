"""Element partitioners: one function per method behind a name -> callable registry.

Each partitioner has the signature ``fn(mesh, k, weights, *, seed, axis) -> part`` where
``weights`` is a validated positive float array with one entry per element, ``2 <= k <=
nelements``, and ``part`` is an int64 array of expert ids in which every id ``0..k-1`` occurs
(:func:`partition_elements` checks this after every call).
"""

from __future__ import annotations

import logging
import numbers
from typing import Callable, Protocol

import numpy as np

from femoe.errors import ConfigError, MissingDependencyError, PartitionError
from femoe.partition._graph import centroids, dual_graph

logger = logging.getLogger(__name__)


class Partitioner(Protocol):
    def __call__(
        self, mesh, k: int, weights: np.ndarray, *, seed: int, axis: int | None
    ) -> np.ndarray: ...


PARTITIONERS: dict[str, Partitioner] = {}


def register_partitioner(*names: str) -> Callable[[Partitioner], Partitioner]:
    """Register a partitioner under one or more names (a decorator)."""

    def wrap(fn: Partitioner) -> Partitioner:
        for name in names:
            PARTITIONERS[name] = fn
        return fn

    return wrap


def available_methods() -> list[str]:
    """Names accepted by ``partition_elements(method=...)``, sorted."""
    return sorted(PARTITIONERS)


# --- helpers ------------------------------------------------------------------------------
def _cut_points(weights_in_order: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Indices that cut an ordered list into ``len(fractions)`` contiguous, non-empty chunks
    whose weights are as close as possible to ``fractions`` (summing to 1) of the total.

    Returns the ``len(fractions) + 1`` chunk boundaries, starting at 0 and ending at n.
    """
    n = weights_in_order.size
    m = fractions.size
    cum = np.cumsum(weights_in_order)
    targets = cum[-1] * np.cumsum(fractions)[:-1]
    # c elements in front of the cut weigh cum[c - 1]; pick the c nearest to each target
    hi = np.searchsorted(cum, targets, side="left") + 1  # first c with cum[c-1] >= target
    lo = hi - 1
    lo_w = np.where(lo >= 1, cum[np.maximum(lo - 1, 0)], 0.0)
    hi_w = cum[np.minimum(hi - 1, n - 1)]
    cuts = np.where(np.abs(lo_w - targets) <= np.abs(hi_w - targets), lo, hi)
    # every chunk non-empty: cut j (1-based) in [j, n - (m - j)], strictly increasing
    j = np.arange(1, m)
    cuts = np.clip(cuts, j, n - (m - j))
    cuts = np.maximum.accumulate(cuts - j) + j
    return np.concatenate([[0], cuts, [n]]).astype(np.int64)


def _split_in_order(order: np.ndarray, weights: np.ndarray, k: int) -> np.ndarray:
    """Expert id per element when ``order`` (a permutation) is cut into ``k`` chunks of equal
    weight."""
    bounds = _cut_points(weights[order], np.full(k, 1.0 / k))
    part = np.empty(order.size, dtype=np.int64)
    part[order] = np.repeat(np.arange(k, dtype=np.int64), np.diff(bounds))
    return part


def _longest_axis(points: np.ndarray) -> int:
    return int(np.argmax(points.max(axis=1) - points.min(axis=1)))


def _fill_empty_parts(part: np.ndarray, k: int, xadj: np.ndarray, adjncy: np.ndarray) -> None:
    """Give every empty part one element taken from the largest part, in place.

    METIS may leave parts empty when ``k`` is close to the number of elements. The moved
    element is one on the border of the largest part when there is one, so the donor stays
    as connected as possible.
    """
    counts = np.bincount(part, minlength=k)
    for empty in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        members = np.flatnonzero(part == donor)
        rows = np.repeat(np.arange(xadj.size - 1), np.diff(xadj))
        on_border = np.zeros(part.size, dtype=bool)
        on_border[rows[part[rows] != part[adjncy]]] = True
        border = members[on_border[members]]
        moved = int(border[0] if border.size else members[-1])
        part[moved] = empty
        counts[donor] -= 1
        counts[empty] += 1
        logger.warning("METIS left expert %d empty; moved element %d to it", empty, moved)


# --- partitioners -------------------------------------------------------------------------
@register_partitioner("metis")
def _metis(mesh, k: int, weights: np.ndarray, *, seed: int, axis: int | None) -> np.ndarray:
    """METIS (``pymetis.part_graph``) on the element dual graph, vertex weights = ``weights``.

    METIS takes integer weights: they are scaled so their mean is 100 (1 % resolution) and
    rounded, at least 1. Unit weights are not passed at all.
    """
    try:
        import pymetis
    except ImportError as exc:
        raise MissingDependencyError(
            "method='metis' needs pymetis, which is not installed: "
            "`pip install pymetis` (or femoe[metis]), or use method='rcb'"
        ) from exc
    xadj, adjncy = dual_graph(mesh)
    vweights = None
    if not np.all(weights == weights[0]):
        vweights = np.maximum(np.rint(weights * (100.0 / weights.mean())), 1).astype(np.int64)
    result = pymetis.part_graph(
        k,
        pymetis.CSRAdjacency(xadj, adjncy),
        vweights=vweights,
        options=pymetis.Options(seed=int(seed)),
    )
    part = np.asarray(result.vertex_part, dtype=np.int64)
    _fill_empty_parts(part, k, xadj, adjncy)
    return part


@register_partitioner("rcb")
def _rcb(mesh, k: int, weights: np.ndarray, *, seed: int, axis: int | None) -> np.ndarray:
    """Recursive coordinate bisection of the element centroids (pure numpy).

    Each step cuts the current set across its longest extent into two sets whose weights are
    in proportion ``floor(k/2) : ceil(k/2)`` of the experts they will receive, so any ``k``
    works, not only powers of two.
    """
    points = centroids(mesh)
    part = np.empty(points.shape[1], dtype=np.int64)
    stack = [(np.arange(points.shape[1]), k, 0)]
    while stack:
        idx, kk, first = stack.pop()
        if kk == 1:
            part[idx] = first
            continue
        sub = points[:, idx]
        along = _longest_axis(sub)
        # ties broken by the other coordinates so the result does not depend on input order
        order = np.lexsort(tuple(sub[d] for d in range(sub.shape[0]) if d != along) + (sub[along],))
        k_left = kk // 2
        bounds = _cut_points(weights[idx[order]], np.array([k_left, kk - k_left]) / kk)
        stack.append((idx[order[: bounds[1]]], k_left, first))
        stack.append((idx[order[bounds[1] :]], kk - k_left, first + k_left))
    return part


@register_partitioner("random")
def _random(mesh, k: int, weights: np.ndarray, *, seed: int, axis: int | None) -> np.ndarray:
    """Each element to a random expert (``numpy.random.default_rng(seed)``), balanced: a random
    permutation of the elements is cut into ``k`` chunks of equal weight. Patches are
    scattered, not connected -- this is the ablation against spatial locality."""
    order = np.random.default_rng(seed).permutation(weights.size)
    return _split_in_order(order, weights, k)


@register_partitioner("slab", "grid")
def _slab(mesh, k: int, weights: np.ndarray, *, seed: int, axis: int | None) -> np.ndarray:
    """``k`` slabs of equal width along one coordinate axis (default: the mesh's longest
    extent); an element goes to the slab holding its centroid. This is the paper's fixed
    split. Weights are ignored: slabs are geometric, and an empty slab is an error."""
    points = centroids(mesh)
    nodes = np.asarray(mesh.p)
    dim = nodes.shape[0]
    if axis is None:
        axis = _longest_axis(nodes)
    elif not (isinstance(axis, numbers.Integral) and 0 <= axis < dim):
        raise ConfigError(f"axis must be an integer in [0, {dim}) for a {dim}D mesh, got {axis!r}")
    lo, hi = nodes[axis].min(), nodes[axis].max()
    part = np.floor((points[axis] - lo) / (hi - lo) * k).astype(np.int64)
    part = np.clip(part, 0, k - 1)
    empty = np.flatnonzero(np.bincount(part, minlength=k) == 0)
    if empty.size:
        raise PartitionError(
            f"method='slab' with k={k} along axis {axis} leaves experts {empty.tolist()} "
            f"without elements (the mesh is too coarse or not uniform along that axis); "
            f"use fewer experts or method='rcb'"
        )
    return part


def _has_pymetis() -> bool:
    try:
        import pymetis  # noqa: F401
    except ImportError:
        return False
    return True


@register_partitioner("auto")
def _auto(mesh, k: int, weights: np.ndarray, *, seed: int, axis: int | None) -> np.ndarray:
    """METIS when pymetis imports, otherwise recursive coordinate bisection."""
    method = "metis" if _has_pymetis() else "rcb"
    logger.info("partition method 'auto' uses %r%s", method,
                "" if method == "metis" else " (pymetis is not installed)")
    return PARTITIONERS[method](mesh, k, weights, seed=seed, axis=axis)


# --- public entry point -------------------------------------------------------------------
def _check_k(k: object, n_elements: int) -> int:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise PartitionError(f"k (the number of experts) must be an integer, got {k!r}")
    k = int(k)
    if k < 1:
        raise PartitionError(f"k (the number of experts) must be at least 1, got {k}")
    if k > n_elements:
        raise PartitionError(
            f"k={k} experts but the mesh has only {n_elements} elements: each expert needs at "
            f"least one element; refine the mesh or use k <= {n_elements}"
        )
    return k


def _check_weights(weights: object, n_elements: int) -> np.ndarray:
    if weights is None:
        return np.ones(n_elements)
    w = np.array(weights, dtype=np.float64)  # a copy: never edit the caller's array
    if w.shape != (n_elements,):
        raise PartitionError(
            f"weights must have one entry per element, shape ({n_elements},), got {w.shape}"
        )
    if not np.all(np.isfinite(w)) or np.any(w <= 0):
        raise PartitionError("weights must be finite and positive")
    return w


def partition_elements(
    mesh,
    k: int,
    method: str = "auto",
    weights: np.ndarray | None = None,
    seed: int = 0,
    *,
    axis: int | None = None,
) -> np.ndarray:
    """Split the elements of a mesh into ``k`` patches, one per expert.

    Parameters
    ----------
    mesh : skfem.Mesh
        Any scikit-fem mesh (1D, 2D or 3D).
    k : int
        Number of experts, ``1 <= k <= mesh.nelements``.
    method : str
        ``"metis"`` (METIS on the element dual graph, needs pymetis), ``"rcb"`` (recursive
        coordinate bisection of element centroids), ``"random"`` (balanced random assignment,
        reproducible by ``seed``), ``"slab"`` / ``"grid"`` (``k`` equal-width slabs along
        ``axis``) or ``"auto"`` (metis if pymetis imports, else rcb).
    weights : array_like, optional
        Positive weight per element, balanced across experts by metis, rcb and random
        (e.g. the DOF count per element, see :func:`dof_weights`). Default: all ones.
    seed : int
        Seed for ``random`` and for METIS.
    axis : int, optional
        Slab axis for ``"slab"``; default the mesh's longest extent. Ignored by other methods.

    Returns
    -------
    numpy.ndarray
        Expert id of each element, int64, shape ``(nelements,)``; every id ``0..k-1`` occurs.

    Raises
    ------
    ConfigError
        ``method`` is not a known name.
    PartitionError
        ``k`` is not an integer in ``[1, nelements]``, the weights are invalid, or the method
        cannot give every expert an element.
    MissingDependencyError
        ``method="metis"`` without pymetis installed.
    """
    if method not in PARTITIONERS:
        raise ConfigError(
            f"Unknown partition method {method!r}. Pick one of {available_methods()}"
        )
    n_elements = int(mesh.t.shape[1])
    k = _check_k(k, n_elements)
    w = _check_weights(weights, n_elements)
    if k == 1:
        return np.zeros(n_elements, dtype=np.int64)
    part = np.asarray(PARTITIONERS[method](mesh, k, w, seed=seed, axis=axis), dtype=np.int64)
    counts = np.bincount(part, minlength=k)
    if part.shape != (n_elements,) or counts.size != k or np.any(counts == 0):
        raise PartitionError(
            f"partitioner {method!r} did not give each of the {k} experts an element "
            f"(element counts {counts.tolist()})"
        )
    return part
