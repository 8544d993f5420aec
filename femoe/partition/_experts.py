"""Index sets of the experts: which DOFs each expert owns, enforces and reads.

Built once per (basis, element partition, Dirichlet set); see DESIGN.md section 3.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from femoe.errors import PartitionError
from femoe.partition._graph import dual_graph, edge_cut
from femoe.partition._methods import partition_elements


def _pad(groups: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    width = max((g.size for g in groups), default=0)
    padded = np.zeros((len(groups), width), dtype=np.int64)
    mask = np.zeros((len(groups), width), dtype=bool)
    for row, g in enumerate(groups):
        padded[row, : g.size] = g
        mask[row, : g.size] = True
    padded.setflags(write=False)
    mask.setflags(write=False)
    return padded, mask


def _split_sorted(keys: np.ndarray, n: int, k: int) -> tuple[np.ndarray, ...]:
    """Split sorted unique ``expert * n + index`` keys into one sorted index array per expert."""
    bounds = np.searchsorted(keys // n, np.arange(k + 1))
    return tuple(_frozen(keys[bounds[i] : bounds[i + 1]] % n) for i in range(k))


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    # sort-based: np.unique's hash path (numpy >= 2.3) is ~10x slower on 1e7 int64 keys
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if a.size else a


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a, dtype=np.int64)
    a.setflags(write=False)
    return a


def _check_dirichlet(dirichlet: object, n_dofs: int) -> np.ndarray:
    if dirichlet is None:
        return np.zeros(0, dtype=np.int64)
    if hasattr(dirichlet, "all") and not isinstance(dirichlet, np.ndarray):
        dirichlet = dirichlet.all()  # a scikit-fem DofsView
    d = np.asarray(dirichlet).ravel()
    if d.size and not np.issubdtype(d.dtype, np.integer):
        raise PartitionError(f"dirichlet must be an array of DOF indices, got dtype {d.dtype}")
    d = np.unique(d.astype(np.int64))
    if d.size and (d[0] < 0 or d[-1] >= n_dofs):
        raise PartitionError(
            f"dirichlet DOF indices must lie in [0, {n_dofs}), got range [{d[0]}, {d[-1]}]"
        )
    return d


def _check_element_part(element_part: object, n_elements: int) -> tuple[np.ndarray, int]:
    part = np.asarray(element_part)
    if part.shape != (n_elements,) or not np.issubdtype(part.dtype, np.integer):
        raise PartitionError(
            f"element_part must be an integer array of shape ({n_elements},) (one expert id "
            f"per element), got {part.dtype} array of shape {part.shape}"
        )
    part = part.astype(np.int64)
    if part.min() < 0:
        raise PartitionError(f"element_part has a negative expert id {int(part.min())}")
    k = int(part.max()) + 1
    empty = np.flatnonzero(np.bincount(part, minlength=k) == 0)
    if empty.size:
        raise PartitionError(
            f"element_part uses ids up to {k - 1} but experts {empty.tolist()} have no "
            f"elements; ids must be exactly 0..K-1"
        )
    return part, k


def dof_weights(basis, dirichlet: np.ndarray | None = None) -> np.ndarray:
    """Element weights that balance unknowns: each element gets ``1/m`` of every non-Dirichlet
    DOF it shares with ``m`` elements, so the weight of a patch approximates the number of
    DOFs it owns.

    Parameters
    ----------
    basis : skfem.CellBasis
        Any scikit-fem basis.
    dirichlet : array_like, optional
        Dirichlet DOFs, which no expert enforces and which therefore weigh nothing.

    Returns
    -------
    numpy.ndarray
        Positive float64 weight per element (elements whose DOFs are all Dirichlet get a
        small positive floor so that every weight stays valid for METIS).
    """
    dofs = np.asarray(basis.element_dofs)
    valence = np.bincount(dofs.ravel(), minlength=basis.N).astype(np.float64)
    share = np.zeros(basis.N)
    np.divide(1.0, valence, out=share, where=valence > 0)
    share[_check_dirichlet(dirichlet, basis.N)] = 0.0
    w = share[dofs].sum(axis=0)
    return np.maximum(w, 1e-3 * max(w.mean(), 1e-12))


@dataclass(frozen=True, eq=False)
class ExpertPartition:
    """DOF index sets of ``K`` experts that each own a patch of elements.

    Ownership rule: a DOF belongs to the expert that owns the most of the elements containing
    it; ties go to the lowest expert id. Every DOF has exactly one owner. On compact patches
    (metis, rcb, slab) ties happen only on the interface and the bias is negligible; on
    ``random`` patches most DOFs are ties, so low ids own markedly more DOFs (see ``stats()``).

    Build it with :meth:`from_basis` (given an element partition) or
    :func:`partition_experts` (which also partitions). All arrays are int64, read-only, and
    every per-expert index array is sorted.

    Attributes
    ----------
    element_part : numpy.ndarray
        Expert id per element, shape ``(nelements,)``.
    owner : numpy.ndarray
        Expert id per DOF, shape ``(N,)``.
    dirichlet : numpy.ndarray
        Sorted Dirichlet DOFs (enforced by nobody: their values are prescribed).
    elements : tuple of numpy.ndarray
        ``elements[k]``: the elements of expert ``k``.
    owned : tuple of numpy.ndarray
        ``owned[k]`` = O_k: non-Dirichlet DOFs owned by ``k``, the residual rows it enforces.
    local : tuple of numpy.ndarray
        ``local[k]`` = L_k: all DOFs of all elements that contain a DOF of O_k, i.e. every
        DOF the residual rows O_k depend on (owned plus halo). Contains O_k.
    interface : numpy.ndarray
        Gamma: DOFs whose element star (the elements containing them) spans more than one
        expert. May include Dirichlet DOFs.
    interior : tuple of numpy.ndarray
        ``interior[k]`` = I_k = O_k minus Gamma.
    edge_cut : int
        Element dual-graph edges (shared facets) between different experts.
    """

    element_part: np.ndarray
    owner: np.ndarray
    dirichlet: np.ndarray
    elements: tuple[np.ndarray, ...]
    owned: tuple[np.ndarray, ...]
    local: tuple[np.ndarray, ...]
    interface: np.ndarray
    interior: tuple[np.ndarray, ...]
    edge_cut: int

    @classmethod
    def from_basis(
        cls, basis, element_part: np.ndarray, dirichlet: np.ndarray | None = None
    ) -> "ExpertPartition":
        """Compute the index sets of every expert (vectorised, no loop over elements).

        Parameters
        ----------
        basis : skfem.CellBasis
            Any scikit-fem basis; ``basis.element_dofs`` and ``basis.N`` are used.
        element_part : array_like of int
            Expert id per element; the ids must be exactly ``0..K-1``.
        dirichlet : array_like of int or skfem DofsView, optional
            DOFs with prescribed values: owned by someone but enforced by no expert.

        Returns
        -------
        ExpertPartition
        """
        dofs = np.asarray(basis.element_dofs, dtype=np.int64)  # (Nbfun, nelements)
        n_dofs = int(basis.N)
        n_elements = dofs.shape[1]
        part, k = _check_element_part(element_part, n_elements)
        dirichlet = _check_dirichlet(dirichlet, n_dofs)

        # star[d, j] = number of elements of expert j that contain DOF d
        flat_dofs = dofs.ravel()
        flat_part = np.broadcast_to(part, dofs.shape).ravel()
        star = sp.csr_matrix(
            (np.ones(flat_dofs.size, dtype=np.int64), (flat_dofs, flat_part)), shape=(n_dofs, k)
        )
        star.sum_duplicates()
        n_experts_in_star = np.diff(star.indptr)
        orphans = np.flatnonzero(n_experts_in_star == 0)
        if orphans.size:
            raise PartitionError(
                f"{orphans.size} DOFs (e.g. {orphans[:5].tolist()}) belong to no element and "
                f"cannot be given an owner; remove unused nodes from the mesh"
            )
        rows = np.repeat(np.arange(n_dofs), n_experts_in_star)
        # per DOF: most elements first, then lowest expert id
        order = np.lexsort((star.indices, -star.data, rows))
        owner = star.indices[order][star.indptr[:-1]].astype(np.int64)
        interface = np.flatnonzero(n_experts_in_star > 1)

        free = np.ones(n_dofs, dtype=bool)
        free[dirichlet] = False
        free_dofs = np.flatnonzero(free)
        owned_keys = owner[free_dofs] * n_dofs + free_dofs
        owned = _split_sorted(np.sort(owned_keys), n_dofs, k)
        interior_mask = free.copy()
        interior_mask[interface] = False
        interior_dofs = np.flatnonzero(interior_mask)
        interior = _split_sorted(np.sort(owner[interior_dofs] * n_dofs + interior_dofs), n_dofs, k)

        # expert j reads element e when e contains a DOF that j owns and enforces
        touch = free[flat_dofs]
        elem_index = np.broadcast_to(np.arange(n_elements), dofs.shape).ravel()
        pairs = _sorted_unique(owner[flat_dofs[touch]] * n_elements + elem_index[touch])
        pair_expert, pair_elem = pairs // n_elements, pairs % n_elements
        local_keys = _sorted_unique((pair_expert[None, :] * n_dofs + dofs[:, pair_elem]).ravel())
        local = _split_sorted(local_keys, n_dofs, k)

        elem_order = np.argsort(part, kind="stable")
        bounds = np.searchsorted(part[elem_order], np.arange(k + 1))
        elements = tuple(_frozen(elem_order[bounds[i] : bounds[i + 1]]) for i in range(k))

        xadj, adjncy = dual_graph(basis.mesh)
        return cls(
            element_part=_frozen(part),
            owner=_frozen(owner),
            dirichlet=_frozen(dirichlet),
            elements=elements,
            owned=owned,
            local=local,
            interface=_frozen(interface),
            interior=interior,
            edge_cut=edge_cut(xadj, adjncy, part),
        )

    # --- sizes ----------------------------------------------------------------------------
    @property
    def k(self) -> int:
        """Number of experts."""
        return len(self.owned)

    @property
    def n_dofs(self) -> int:
        """Number of DOFs of the basis (``basis.N``)."""
        return int(self.owner.size)

    @property
    def n_elements(self) -> int:
        """Number of elements of the mesh."""
        return int(self.element_part.size)

    @cached_property
    def halo(self) -> tuple[np.ndarray, ...]:
        """``halo[k]`` = L_k minus O_k: DOFs expert ``k`` reads but does not enforce."""
        return tuple(_frozen(np.setdiff1d(l, o, assume_unique=True))
                     for l, o in zip(self.local, self.owned))

    # --- batched (padded) index arrays ----------------------------------------------------
    @cached_property
    def _owned_pad(self) -> tuple[np.ndarray, np.ndarray]:
        return _pad(self.owned)

    @cached_property
    def _local_pad(self) -> tuple[np.ndarray, np.ndarray]:
        return _pad(self.local)

    @property
    def owned_padded(self) -> np.ndarray:
        """O_k stacked into shape ``(K, max_k |O_k|)``, padded with DOF 0 (a valid index, so a
        gather never fails; mask the padding with :attr:`owned_mask`)."""
        return self._owned_pad[0]

    @property
    def owned_mask(self) -> np.ndarray:
        """``True`` where :attr:`owned_padded` holds a real DOF."""
        return self._owned_pad[1]

    @property
    def local_padded(self) -> np.ndarray:
        """L_k stacked into shape ``(K, max_k |L_k|)``, padded with DOF 0."""
        return self._local_pad[0]

    @property
    def local_mask(self) -> np.ndarray:
        """``True`` where :attr:`local_padded` holds a real DOF."""
        return self._local_pad[1]

    @cached_property
    def owned_in_local_padded(self) -> np.ndarray:
        """Positions of O_k inside L_k, shape of :attr:`owned_padded` (padded with 0):
        ``local_padded[k, owned_in_local_padded[k, i]] == owned_padded[k, i]`` wherever
        :attr:`owned_mask` holds."""
        pos = np.zeros_like(self.owned_padded)
        for row, (o, l) in enumerate(zip(self.owned, self.local)):
            pos[row, : o.size] = np.searchsorted(l, o)
        pos.setflags(write=False)
        return pos

    # --- statistics -----------------------------------------------------------------------
    def stats(self) -> dict:
        """Sizes and balance, as plain Python numbers (JSON-serialisable).

        ``imbalance`` is max/mean of the owned (enforced) DOF counts; ``halo_overhead`` is
        ``sum |L_k| / sum |O_k|`` (the extra reading experts do).
        """
        owned = np.array([o.size for o in self.owned])
        local = np.array([l.size for l in self.local])
        elements = np.array([e.size for e in self.elements])
        return {
            "k": self.k,
            "n_elements": self.n_elements,
            "n_dofs": self.n_dofs,
            "n_dirichlet": int(self.dirichlet.size),
            "elements": elements.tolist(),
            "owned": owned.tolist(),
            "local": local.tolist(),
            "interior": [i.size for i in self.interior],
            "imbalance": float(owned.max() / owned.mean()) if owned.sum() else 1.0,
            "element_imbalance": float(elements.max() / elements.mean()),
            "interface": int(self.interface.size),
            "edge_cut": int(self.edge_cut),
            "halo_overhead": float(local.sum() / owned.sum()) if owned.sum() else 1.0,
        }


def partition_experts(
    basis,
    k: int,
    method: str = "auto",
    *,
    dirichlet: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    seed: int = 0,
    axis: int | None = None,
) -> ExpertPartition:
    """Partition the elements of ``basis.mesh`` among ``k`` experts and build their index sets.

    Parameters
    ----------
    basis : skfem.CellBasis
        Any scikit-fem basis.
    k : int
        Number of experts.
    method : str
        A name from :func:`available_methods` (see :func:`partition_elements`).
    dirichlet : array_like of int or skfem DofsView, optional
        Dirichlet DOFs.
    weights : array_like, optional
        Element weights; default :func:`dof_weights` so that experts own similar numbers of
        unknowns.
    seed : int
        Seed for ``random`` and METIS.
    axis : int, optional
        Slab axis for ``method="slab"``.

    Returns
    -------
    ExpertPartition
    """
    if weights is None:
        weights = dof_weights(basis, dirichlet)
    part = partition_elements(basis.mesh, k, method, weights, seed, axis=axis)
    return ExpertPartition.from_basis(basis, part, dirichlet)
