"""Read-time validation and repair of a mesh's nodes and cells, before scikit-fem sees them.

:func:`~femoe.mesh.read.from_meshio` runs these checks on the raw meshio arrays, in this order;
each failure names the file and what to do:

1. NaN or infinite coordinates (:class:`~femoe.errors.NonFiniteCoordinatesError`;
   :func:`check_finite`);
2. no usable cells (:class:`~femoe.errors.UnsupportedCellError`), several cell types in the
   domain (:class:`~femoe.errors.MixedCellTypesError`; :func:`domain_cell_type`);
3. no coordinates or elements on nodes that do not exist (:class:`~femoe.errors.MeshReadError`),
   a curve or surface that is not flat (:class:`~femoe.errors.UnsupportedCellError`;
   :func:`flat_coordinates`);
4. nodes no element uses are dropped and the rest renumbered, tags included
   (:class:`~femoe.errors.MeshRepairWarning`; :func:`drop_unused_nodes`);
5. coinciding nodes (distance <= :data:`DUPLICATE_RTOL` times the bounding-box size) raise
   :class:`~femoe.errors.DuplicateNodesError` (:func:`check_duplicates`);
6. elements with ``|measure| <= DEGENERATE_RTOL * h**dim`` (``h`` the largest side of the
   bounding box) raise :class:`~femoe.errors.DegenerateElementError`; inverted elements
   (negative orientation) get their nodes reordered (:class:`~femoe.errors.MeshRepairWarning`;
   :func:`check_measures`).

The file-level failures (missing, unknown format, unreadable) belong to reading, in
:mod:`femoe.mesh.read`. These checks live apart from :mod:`femoe.mesh.quality` on purpose:
quality computes figures of a finished scikit-fem mesh (also for ``femoe mesh info``) and
decides nothing, while this module works on meshio arrays that scikit-fem could not even hold
(mixed types, dangling indices, inverted cells) and decides what is an error, what is repaired
and what the messages say; it borrows only quality's measure formula.
"""

from __future__ import annotations

import warnings

import meshio
import numpy as np
from numpy.typing import NDArray
from scipy.spatial import cKDTree

from femoe.errors import (
    DegenerateElementError,
    DuplicateNodesError,
    MeshReadError,
    MeshRepairWarning,
    MixedCellTypesError,
    NonFiniteCoordinatesError,
    UnsupportedCellError,
)
from femoe.mesh._formats import DOMAIN_TYPES, cell_dim, supported_list
from femoe.mesh.quality import DEGENERATE_RTOL, _signed_measures

#: Two nodes closer than ``DUPLICATE_RTOL`` times the largest bounding-box side are duplicates.
DUPLICATE_RTOL = 1e-10

# node permutations that reverse the orientation of an element (meshio/VTK node order)
_FLIP: dict[str, list[int]] = {
    "line": [1, 0],
    "triangle": [0, 2, 1],
    "triangle6": [0, 2, 1, 5, 4, 3],
    "quad": [0, 3, 2, 1],
    "quad9": [0, 3, 2, 1, 7, 6, 5, 4, 8],
    "tetra": [0, 2, 1, 3],
    "tetra10": [0, 2, 1, 3, 6, 5, 4, 7, 9, 8],
    "hexahedron": [4, 5, 6, 7, 0, 1, 2, 3],
    "hexahedron27": [
        4,
        5,
        6,
        7,
        0,
        1,
        2,
        3,
        12,
        13,
        14,
        15,
        8,
        9,
        10,
        11,
        16,
        17,
        18,
        19,
        20,
        21,
        22,
        23,
        25,
        24,
        26,
    ],
}


def check_finite(points: NDArray, src) -> None:
    """Refuse NaN or infinite node coordinates."""
    bad = ~np.isfinite(np.asarray(points, dtype=float)).all(axis=-1)
    if bad.any():
        raise NonFiniteCoordinatesError(
            f"{int(bad.sum())} node(s) have NaN or infinite coordinates (first: node "
            f"{int(np.nonzero(bad)[0][0])}); fix or re-export the mesh", src)


def domain_cell_type(blocks: list[meshio.CellBlock], src) -> tuple[str, int, str]:
    """The element type of the domain: the one cell type of highest dimension.

    Returns ``(cell_type, dimension, found)``, ``found`` the counts of the cells of that
    dimension as text (``"120 triangle"``) for later messages. Raises
    :class:`~femoe.errors.UnsupportedCellError` when there is no such type femoe supports and
    :class:`~femoe.errors.MixedCellTypesError` when there are several.
    """
    if not blocks or all(len(b.data) == 0 for b in blocks):
        raise UnsupportedCellError(
            f"the mesh has no cells. femoe needs elements of one of the types "
            f"{supported_list()}; check that the file was exported with its elements.",
            src,
        )
    counts: dict[str, int] = {}
    for b in blocks:
        counts[b.type] = counts.get(b.type, 0) + len(b.data)
    top = max(cell_dim(t) for t in counts)
    top_types = sorted(t for t in counts if cell_dim(t) == top)
    found = ", ".join(f"{counts[t]} {t}" for t in top_types)
    if top <= 0:
        raise UnsupportedCellError(
            f"the mesh has only point cells ({found}); femoe needs elements of one of the types "
            f"{supported_list()}. Mesh the geometry (e.g. gmsh -2) before reading it.",
            src,
        )
    supported = [t for t in top_types if t in DOMAIN_TYPES]
    if not supported:
        raise UnsupportedCellError(
            f"the {top}D cells ({found}) are of no type femoe supports; supported are "
            f"{supported_list()}. Re-mesh with simplices or (full, not serendipity) "
            "quadrilaterals/hexahedra.",
            src,
        )
    if len(top_types) > 1:
        raise MixedCellTypesError(
            f"the {top}D domain mixes cell types ({found}); femoe needs a single element type. "
            "Re-mesh with one type (in gmsh: Mesh.RecombineAll=0 for simplices only, or "
            "recombine every surface/volume for quadrilaterals/hexahedra only) or split the "
            "mesh into one file per type.",
            src,
        )
    return top_types[0], top, found


def flat_coordinates(points: NDArray, cells: NDArray, top: int, found: str, src) -> NDArray:
    """The ``top`` coordinates of the nodes, as float64, after checking that the elements refer
    to existing nodes and that a 1D/2D mesh is flat (constant extra coordinates are dropped,
    others are refused)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim != 2 or len(points) == 0:
        raise MeshReadError("the mesh has no node coordinates. Export it again.", src)
    if cells.min() < 0 or cells.max() >= len(points):
        raise MeshReadError(
            f"elements refer to nodes that do not exist (indices {cells.min()}..{cells.max()} "
            f"for {len(points)} nodes); the file is corrupt. Export it again.",
            src,
        )
    if points.shape[1] > top:
        extra = points[:, top:]
        if np.ptp(extra[np.unique(cells)], axis=0).max() > 0:
            raise UnsupportedCellError(
                f"the {top}D cells ({found}) do not lie in a {top}D coordinate space (a curve or "
                "surface embedded in a higher dimension); femoe meshes must be flat. Give the "
                f"mesh {top} coordinates (z = 0 for 2D) or mesh the {top + 1}D domain.",
                src,
            )
        points = points[:, :top]
    return points


def drop_unused_nodes(points, cells, facets, bnd_tags, src, cell_type, n_unused):
    """Drop nodes no element uses, renumber cells and facets; warn if the file had any.

    Returns ``(cells, facets, bnd_tags, points, old_ids)``, ``old_ids`` the file's number of
    each kept node.
    """
    used = np.unique(cells)
    if len(used) == len(points):
        return cells, facets, bnd_tags, points, np.arange(len(points))
    new_id = np.full(len(points), -1, dtype=np.int64)
    new_id[used] = np.arange(len(used))
    keep = np.all(new_id[facets] >= 0, axis=1) if len(facets) else np.zeros(0, dtype=bool)
    fac_new = np.full(len(facets), -1, dtype=np.int64)
    fac_new[keep] = np.arange(int(keep.sum()))
    dropped_facets = len(facets) - int(keep.sum())
    bnd_tags = {k: fac_new[v][fac_new[v] >= 0] for k, v in bnd_tags.items()}
    bnd_tags = {k: v for k, v in bnd_tags.items() if len(v)}
    msg = (
        f"{src}: {n_unused} of {len(points)} nodes are used by no {cell_type} "
        "element; dropped them and renumbered the rest (tags follow the new numbering)."
    )
    if dropped_facets:
        msg += f" {dropped_facets} tagged facets on those nodes were dropped too."
    if n_unused:
        # stacklevel 4: this function, from_meshio, read_mesh, the caller of read_mesh
        warnings.warn(msg, MeshRepairWarning, stacklevel=4)
    return new_id[cells], new_id[facets[keep]], bnd_tags, points[used], used


def _bbox_size(points: NDArray) -> float:
    return float(np.ptp(points, axis=0).max()) if len(points) > 1 else 0.0


def check_duplicates(points: NDArray, old_ids: NDArray, src) -> None:
    """Refuse coinciding nodes (naming the first pair by the file's node numbers)."""
    h = _bbox_size(points)
    tol = DUPLICATE_RTOL * h
    pairs = cKDTree(points).query_pairs(tol, output_type="ndarray")
    if len(pairs) == 0:
        return
    i, j = (int(old_ids[k]) for k in pairs[0])
    where = ", ".join(f"{c:.6g}" for c in points[pairs[0][0]])
    raise DuplicateNodesError(
        f"{len(pairs)} pairs of nodes coincide (closer than {DUPLICATE_RTOL:g} x the "
        f"bounding-box size {h:.3g}), e.g. nodes {i} and {j} at ({where}). "
        "Such nodes split the mesh into unconnected pieces. Merge them: in gmsh with "
        "'Coherence Mesh' (gmsh.model.mesh.removeDuplicateNodes()), or with meshio by "
        "numpy.unique(points, axis=0, return_inverse=True) and renumbering the cells.",
        src,
    )


def check_measures(points: NDArray, cells: NDArray, cell_type: str, kind: str, src) -> NDArray:
    """Refuse degenerate elements; return the cells with inverted ones reordered (and warn)."""
    ncorner = DOMAIN_TYPES[cell_type][1]
    measure = _signed_measures(points, cells[:, :ncorner], kind)
    h = _bbox_size(points)
    dim = points.shape[1]
    tol = DEGENERATE_RTOL * h**dim
    bad = np.flatnonzero(np.abs(measure) <= tol)
    if len(bad):
        first = ", ".join(str(int(b)) for b in bad[:10])
        raise DegenerateElementError(
            f"{len(bad)} of {len(cells)} {cell_type} elements have zero measure "
            f"(|measure| <= {DEGENERATE_RTOL:g} * h^{dim} = {tol:.3g}, h = {h:.3g} the largest "
            f"bounding-box side); the first (0-based among the {cell_type} elements): [{first}"
            f"{', ...' if len(bad) > 10 else ''}]. Collapsed or flat elements make the stiffness "
            "matrix singular: remove them or re-mesh (gmsh: Mesh.Optimize=1).",
            src,
        )
    inverted = np.flatnonzero(measure < 0)
    if len(inverted):
        cells = cells.copy()
        cells[inverted] = cells[inverted][:, _FLIP[cell_type]]
        # stacklevel 4: this function, from_meshio, read_mesh, the caller of read_mesh
        warnings.warn(
            f"{src}: {len(inverted)} of {len(cells)} {cell_type} elements were inverted "
            f"(negative orientation, first: {int(inverted[0])}); reordered their nodes.",
            MeshRepairWarning,
            stacklevel=4,
        )
    return cells
