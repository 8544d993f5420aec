"""The element dual graph: elements are vertices, and two elements are adjacent when they
share a facet (an edge in 2D, a face in 3D, a node in 1D)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from skfem.mesh.mesh_dg import MeshDG


def dual_graph(mesh) -> tuple[np.ndarray, np.ndarray]:
    """CSR adjacency ``(xadj, adjncy)`` of the element dual graph of a scikit-fem mesh.

    Parameters
    ----------
    mesh : skfem.Mesh
        Any scikit-fem mesh; its facet-to-element map ``f2t`` defines the adjacency.

    Returns
    -------
    xadj : numpy.ndarray
        Row pointers, int64, shape ``(nelements + 1,)``.
    adjncy : numpy.ndarray
        Neighbour lists, int64, both directions of each edge stored, sorted within each row.
    """
    f2t = np.asarray(mesh.f2t)
    interior = f2t[:, (f2t[0] >= 0) & (f2t[1] >= 0)]
    return _csr_from_pairs(interior[0], interior[1], int(mesh.t.shape[1]))


def _csr_from_pairs(a: np.ndarray, b: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.concatenate([a, b]).astype(np.int64)
    cols = np.concatenate([b, a]).astype(np.int64)
    graph = sp.csr_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    graph.sum_duplicates()
    graph.sort_indices()
    return graph.indptr.astype(np.int64), graph.indices.astype(np.int64)


def edge_cut(xadj: np.ndarray, adjncy: np.ndarray, part: np.ndarray) -> int:
    """Number of dual-graph edges whose two elements belong to different parts."""
    rows = np.repeat(np.arange(xadj.size - 1), np.diff(xadj))
    return int(np.count_nonzero(part[rows] != part[adjncy]) // 2)


def centroids(mesh) -> np.ndarray:
    """Element centroids (mean of the element's vertices), shape ``(dim, nelements)``.

    On a periodic mesh (scikit-fem's ``MeshDG``, e.g. ``MeshTri1DG.periodic``) ``mesh.t`` numbers
    the identified vertices while ``mesh.p`` holds every element's own vertex copies, so
    ``p[:, t]`` would mix unrelated points; there the centroid is the element mapping's image
    of the reference element's vertex mean (the element's own, unwrapped vertices)."""
    if isinstance(mesh, MeshDG):
        ref = np.asarray(mesh.elem.refdom.p, dtype=float).mean(axis=1, keepdims=True)
        return np.asarray(mesh.mapping().F(ref))[:, :, 0]
    return np.asarray(mesh.p)[:, np.asarray(mesh.t)].mean(axis=1)
