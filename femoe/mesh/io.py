"""Read meshes into scikit-fem with named tags, and write fields for visualisation.

Reading
-------
:func:`read_mesh` reads any format meshio reads (Gmsh 2.2/4.1 ASCII or binary, VTU, XDMF,
Medit, Abaqus...) and returns a scikit-fem mesh. The conversion itself is scikit-fem's own
bridge, :func:`skfem.io.meshio.from_meshio`; this module prepares its input:

* The element type is the one of highest topological dimension in the file. Supported:
  ``line`` (and ``line3``, whose mid nodes are dropped: an interval is straight) ->
  ``MeshLine1``; ``triangle``/``triangle6`` -> ``MeshTri1``/``MeshTri2``; ``quad``/``quad9``
  -> ``MeshQuad1``/``MeshQuad2``; ``tetra``/``tetra10`` -> ``MeshTet1``/``MeshTet2``;
  ``hexahedron``/``hexahedron27`` -> ``MeshHex1``/``MeshHex2``. Anything else in that
  dimension (wedge, pyramid, polygon, quad8...) is rejected, as is a mix of types.
* Cells one dimension lower become facet tags (``mesh.boundaries``; for 1D meshes these are
  ``vertex`` cells). Second-order facets (``line3``, ``triangle6``, ``quad9``) are matched by
  their corners. Tagged cells of still lower dimension (edges of a 3D mesh, points of a 2D
  mesh) are ignored: scikit-fem has no place for them.
* Tag names, in this order of precedence:

  1. ``gmsh:physical`` cell data (Gmsh 2.2 and 4.1, and VTU/XDMF files converted from them),
     named by the Gmsh ``$PhysicalNames`` (meshio ``field_data``) of the same dimension;
  2. meshio ``cell_sets`` (Gmsh 4.1, Abaqus element sets, ...) not already named above;
     Gmsh's internal sets (``gmsh:bounding_entities`` and the like) are dropped;
  3. other integer tag arrays (``medit:ref``, ``CellEntityIds``, ``cell_tags``, ...);
  4. scikit-fem's own ``skfem:s:*`` / ``skfem:b:*`` encoding (files written by scikit-fem).

  **Unnamed tags** (a physical group without a name, a VTU file that lost the Gmsh names,
  a Medit reference) are keyed by their number as a string, e.g. ``mesh.boundaries["3"]``.
  Gmsh tag 0 ("no physical group") is not a tag.

Validation, in this order, each failure naming the file and what to do:

1. missing file (:class:`~femoe.errors.MeshFileNotFoundError`), unknown format
   (:class:`~femoe.errors.MeshFormatError`), unreadable file
   (:class:`~femoe.errors.MeshReadError`);
2. no usable cells (:class:`~femoe.errors.UnsupportedCellError`), several cell types in the
   domain (:class:`~femoe.errors.MixedCellTypesError`);
3. nodes no element uses are dropped and the rest renumbered, tags included
   (:class:`~femoe.errors.MeshRepairWarning`);
4. coinciding nodes (distance <= ``DUPLICATE_RTOL`` times the bounding-box size) raise
   :class:`~femoe.errors.DuplicateNodesError`;
5. elements with ``|measure| <= DEGENERATE_RTOL * h**dim`` (``h`` the largest side of the
   bounding box, ``DEGENERATE_RTOL = 1e-12``) raise :class:`~femoe.errors.DegenerateElementError`;
6. inverted elements (negative orientation) get their nodes reordered
   (:class:`~femoe.errors.MeshRepairWarning`).

Writing
-------
:func:`write_fields` writes nodal and per-element fields on a mesh, one file (any meshio format,
by suffix) or an XDMF time series (``.xdmf`` plus ``.h5`` beside it).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import meshio
import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.spatial import cKDTree
from skfem import Mesh, MeshHex1, MeshHex2
from skfem.io.meshio import HEX_MAPPING, from_meshio as _skfem_from_meshio

from femoe.errors import (
    DegenerateElementError,
    DuplicateNodesError,
    EmptyGroupWarning,
    MeshFileNotFoundError,
    MeshFormatError,
    MeshReadError,
    MeshRepairWarning,
    MixedCellTypesError,
    NonFiniteCoordinatesError,
    ShapeError,
    UnsupportedCellError,
)
from femoe.mesh.quality import DEGENERATE_RTOL, _signed_measures

#: scikit-fem reference domain -> meshio cell type of the first-order element
CELL_NAMES = {
    "RefLine": "line",
    "RefTri": "triangle",
    "RefQuad": "quad",
    "RefTet": "tetra",
    "RefHex": "hexahedron",
    "RefWedge": "wedge",
}

logger = logging.getLogger(__name__)

#: Two nodes closer than ``DUPLICATE_RTOL`` times the largest bounding-box side are duplicates.
DUPLICATE_RTOL = 1e-10

# meshio cell type -> (first-order kind, number of corner nodes); the element types we accept
_DOMAIN_TYPES: dict[str, tuple[str, int]] = {
    "line": ("line", 2),
    "line3": ("line", 2),
    "triangle": ("triangle", 3),
    "triangle6": ("triangle", 3),
    "quad": ("quad", 4),
    "quad9": ("quad", 4),
    "tetra": ("tetra", 4),
    "tetra10": ("tetra", 4),
    "hexahedron": ("hexahedron", 8),
    "hexahedron27": ("hexahedron", 8),
}
# meshio cell type of the first-order facets of each kind, and the facet types that match it
_FACETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "line": ("vertex", ("vertex",)),
    "triangle": ("line", ("line", "line3")),
    "quad": ("line", ("line", "line3")),
    "tetra": ("triangle", ("triangle", "triangle6")),
    "hexahedron": ("quad", ("quad", "quad8", "quad9")),
}
_FACET_CORNERS = {"vertex": 1, "line": 2, "triangle": 3, "quad": 4}

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

# integer cell-data arrays that other formats use for tags (named by their number)
_INTEGER_TAG_KEYS = (
    "medit:ref",
    "CellEntityIds",
    "cell_tags",
    "tetgen:ref",
    "ugrid:ref",
    "flac3d:zone",
    "avsucd:material",
)


def _cell_dim(cell_type: str) -> int:
    for prefix, dim in (
        ("vertex", 0),
        ("line", 1),
        ("triangle", 2),
        ("quad", 2),
        ("polygon", 2),
        ("tetra", 3),
        ("hexahedron", 3),
        ("wedge", 3),
        ("pyramid", 3),
    ):
        if cell_type.startswith(prefix):
            return dim
    return -1


def _supported_list() -> str:
    return ", ".join(_DOMAIN_TYPES)


# --- reading --------------------------------------------------------------------------------
def _candidate_formats(path: Path, file_format: str | None) -> list[str]:
    """meshio formats to try, most likely first."""
    known = sorted(meshio._helpers.reader_map)
    if file_format is not None:
        if file_format not in meshio._helpers.reader_map:
            raise MeshFormatError(
                f"unknown file_format {file_format!r}. Pick one of {known}.", path
            )
        return [file_format]
    name = path.name.lower()
    for suffix in sorted(meshio.extension_to_filetypes, key=len, reverse=True):
        if name.endswith(suffix):
            # '.msh' is far more often Gmsh than ANSYS; trying ANSYS first also makes meshio
            # print its (empty) error message on stdout
            return sorted(meshio.extension_to_filetypes[suffix], key=lambda f: f != "gmsh")
    what = f"suffix {path.suffix!r}" if path.suffix else "no suffix"
    raise MeshFormatError(
        f"cannot tell the mesh format from the file name ({what}). Rename the file with one "
        f"of the suffixes {sorted(meshio.extension_to_filetypes)} or pass file_format= one "
        f"of {known}.",
        path,
    )


def _read_meshio(path: Path, file_format: str | None) -> meshio.Mesh:
    if not path.exists():
        raise MeshFileNotFoundError(
            f"mesh file not found (working directory: {Path.cwd()}). Check the path.", path
        )
    if path.is_dir():
        raise MeshReadError("is a folder, not a mesh file. Give the path of a mesh file.", path)
    formats = _candidate_formats(path, file_format)
    if len(formats) > 1 and "gmsh" in formats:
        with open(path, "rb") as f:
            if f.read(11) == b"$MeshFormat":
                formats = ["gmsh"]
    failures = []
    for fmt in formats:
        chatter = io.StringIO()
        try:
            # meshio reports failures on stdout/stderr (and its ANSYS reader calls exit()):
            # keep the terminal clean and turn everything into one MeshReadError
            with (
                warnings.catch_warnings(),
                contextlib.redirect_stdout(chatter),
                contextlib.redirect_stderr(chatter),
            ):
                warnings.simplefilter("ignore")
                return meshio.read(path, file_format=fmt)
        except (Exception, SystemExit) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else "no detail"
            if isinstance(exc, SystemExit):
                detail = "the reader gave up"
            failures.append((fmt, exc, f"as {fmt}: {type(exc).__name__}: {detail}"))
        finally:
            if chatter.getvalue().strip():
                logger.debug("meshio (%s) said: %s", fmt, chatter.getvalue().strip())
    raise MeshReadError(
        f"cannot read the file ({'; '.join(f[2] for f in failures)}). It is probably truncated "
        "or corrupt, or not in the format its suffix says; export it again from the mesh "
        "generator.",
        path,
    ) from failures[0][1]


def read_mesh(path: str | os.PathLike, file_format: str | None = None) -> Mesh:
    """Read a mesh file into a scikit-fem mesh with named boundary and subdomain tags.

    Parameters
    ----------
    path
        The mesh file. The format comes from the suffix (``.msh``, ``.vtu``, ``.xdmf``, ...)
        unless ``file_format`` is given.
    file_format
        A meshio format name (``"gmsh"``, ``"vtu"``, ``"xdmf"``, ...) to override the suffix.

    Returns
    -------
    skfem.Mesh
        ``MeshLine1``, ``MeshTri1/2``, ``MeshQuad1/2``, ``MeshTet1/2`` or ``MeshHex1/2``.
        ``mesh.boundaries`` maps tag names to facet indices (into ``mesh.facets``),
        ``mesh.subdomains`` maps tag names to element indices; both are ``None`` when the
        file has no such tags. See the module documentation for how tags are named.

    Raises
    ------
    femoe.errors.MeshFileNotFoundError, femoe.errors.MeshFormatError,
    femoe.errors.MeshReadError, femoe.errors.UnsupportedCellError,
    femoe.errors.MixedCellTypesError, femoe.errors.DuplicateNodesError,
    femoe.errors.DegenerateElementError
        See the module documentation.

    Warns
    -----
    femoe.errors.MeshRepairWarning
        When unused nodes were dropped or inverted elements reordered.

    Examples
    --------
    >>> mesh = read_mesh("meshes/plate_with_holes.msh")  # doctest: +SKIP
    >>> sorted(mesh.boundaries)  # doctest: +SKIP
    ['hole_1', 'hole_2', 'outer']
    """
    path = Path(path)
    raw = _read_meshio(path, file_format)
    mesh = from_meshio(raw, source=path)
    logger.debug("read %s: %s with %d elements", path, type(mesh).__name__, mesh.nelements)
    return mesh


def _field_names(m: meshio.Mesh) -> dict[tuple[int, int], str]:
    names = {}
    for name, value in (m.field_data or {}).items():
        value = np.asarray(value).ravel()
        if value.size >= 2:
            names[(int(value[0]), int(value[1]))] = str(name)
    return names


def _collect_tags(
    m: meshio.Mesh, blocks: list[int], offsets: dict[int, int]
) -> dict[str, list[NDArray]]:
    """Tags on the selected blocks as name -> list of global row indices (one per source).

    ``blocks`` are the indices of the cell blocks kept (domain or facet), ``offsets`` the
    position of each block's first row in the concatenated array.
    """
    tags: dict[str, list[NDArray]] = {}

    def add(name: str, block: int, rows: NDArray) -> None:
        if len(rows):
            tags.setdefault(name, []).append(np.asarray(rows, dtype=np.int64) + offsets[block])

    cell_data = m.cell_data or {}
    if "gmsh:physical" in cell_data:
        names = _field_names(m)
        for b in blocks:
            values = np.asarray(cell_data["gmsh:physical"][b]).ravel().astype(np.int64)
            dim = _cell_dim(m.cells[b].type)
            for tag in np.unique(values):
                if tag != 0:
                    add(names.get((int(tag), dim), str(int(tag))), b, np.flatnonzero(values == tag))
    named = set(tags)
    for name, members in (m.cell_sets or {}).items():
        if name.startswith("gmsh:") or name in named:
            continue
        for b in blocks:
            if b < len(members) and members[b] is not None:
                add(str(name), b, np.asarray(members[b]).ravel())
    if not tags:
        for key in _INTEGER_TAG_KEYS:
            if key in cell_data:
                for b in blocks:
                    values = np.asarray(cell_data[key][b]).ravel()
                    for tag in np.unique(values):
                        add(str(int(tag)), b, np.flatnonzero(values == tag))
                break
    return tags


def from_meshio(m: meshio.Mesh, source: str | os.PathLike | None = None) -> Mesh:
    """Validate a :class:`meshio.Mesh` and convert it to a scikit-fem mesh with named tags.

    This is :func:`read_mesh` without the reading; use it for meshes built in memory.

    Parameters
    ----------
    m
        The meshio mesh; it is not modified.
    source
        What to call the mesh in error messages (usually its file).

    Returns
    -------
    skfem.Mesh
        As for :func:`read_mesh`.
    """
    src = source if source is not None else "<meshio.Mesh>"
    bad = ~np.isfinite(np.asarray(m.points, dtype=float)).all(axis=-1)
    if bad.any():
        raise NonFiniteCoordinatesError(
            f"{int(bad.sum())} node(s) have NaN or infinite coordinates (first: node "
            f"{int(np.nonzero(bad)[0][0])}); fix or re-export the mesh", src)
    blocks = list(m.cells)
    if not blocks or all(len(b.data) == 0 for b in blocks):
        raise UnsupportedCellError(
            f"the mesh has no cells. femoe needs elements of one of the types "
            f"{_supported_list()}; check that the file was exported with its elements.",
            src,
        )
    counts: dict[str, int] = {}
    for b in blocks:
        counts[b.type] = counts.get(b.type, 0) + len(b.data)
    top = max(_cell_dim(t) for t in counts)
    top_types = sorted(t for t in counts if _cell_dim(t) == top)
    found = ", ".join(f"{counts[t]} {t}" for t in top_types)
    if top <= 0:
        raise UnsupportedCellError(
            f"the mesh has only point cells ({found}); femoe needs elements of one of the types "
            f"{_supported_list()}. Mesh the geometry (e.g. gmsh -2) before reading it.",
            src,
        )
    supported = [t for t in top_types if t in _DOMAIN_TYPES]
    if not supported:
        raise UnsupportedCellError(
            f"the {top}D cells ({found}) are of no type femoe supports; supported are "
            f"{_supported_list()}. Re-mesh with simplices or (full, not serendipity) "
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
    cell_type = top_types[0]
    kind = _DOMAIN_TYPES[cell_type][0]
    facet_type, facet_sources = _FACETS[kind]
    nfc = _FACET_CORNERS[facet_type]

    # the domain cells and the (first-order) facet cells, each block concatenated
    dom_blocks = [i for i, b in enumerate(blocks) if b.type == cell_type]
    fac_blocks = [i for i, b in enumerate(blocks) if b.type in facet_sources]
    dom_off, fac_off, n = {}, {}, 0
    for i in dom_blocks:
        dom_off[i], n = n, n + len(blocks[i].data)
    cells = np.concatenate([np.asarray(blocks[i].data, dtype=np.int64) for i in dom_blocks])
    referenced = np.unique(cells)  # before dropping line3 mid nodes, which are no error
    if cell_type == "line3":  # an interval is straight: the mid nodes carry nothing
        cell_type = "line"
        cells = cells[:, :2]
    n = 0
    for i in fac_blocks:
        fac_off[i], n = n, n + len(blocks[i].data)
    facets = (
        np.concatenate([np.asarray(blocks[i].data, dtype=np.int64)[:, :nfc] for i in fac_blocks])
        if fac_blocks
        else np.zeros((0, nfc), dtype=np.int64)
    )
    ignored = sorted({b.type for b in blocks if _cell_dim(b.type) < top - 1})
    if ignored:
        logger.debug("%s: ignoring cells of types %s (below facet dimension)", src, ignored)
    sub_tags = {
        k: np.unique(np.concatenate(v)) for k, v in _collect_tags(m, dom_blocks, dom_off).items()
    }
    bnd_tags = {
        k: np.unique(np.concatenate(v)) for k, v in _collect_tags(m, fac_blocks, fac_off).items()
    }

    points = np.asarray(m.points, dtype=np.float64)
    if points.ndim != 2 or len(points) == 0:
        raise MeshReadError("the mesh has no node coordinates. Export it again.", src)
    if cells.min() < 0 or cells.max() >= len(points):
        raise MeshReadError(
            f"elements refer to nodes that do not exist (indices {cells.min()}..{cells.max()} "
            f"for {len(points)} nodes); the file is corrupt. Export it again.",
            src,
        )
    # a 1D/2D mesh must be flat: constant extra coordinates are dropped, others are refused
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

    cells, facets, bnd_tags, points, old_ids = _drop_unused_nodes(
        points, cells, facets, bnd_tags, src, cell_type, n_unused=len(points) - len(referenced)
    )
    _check_duplicates(points, old_ids, src)
    cells = _check_measures(points, cells, cell_type, kind, src)
    ncorner = _DOMAIN_TYPES[cell_type][1]
    if cells.shape[1] > ncorner:
        # scikit-fem numbers the corner nodes of a second-order mesh first; number them so here
        # too, or the facet cells (matched by their corner numbers) land on the wrong facets
        corners = np.unique(cells[:, :ncorner])
        order = np.concatenate([corners, np.setdiff1d(np.arange(len(points)), corners)])
        new = np.empty_like(order)
        new[order] = np.arange(len(order))
        points, cells = points[order], new[cells]
        facets = new[facets] if len(facets) else facets

    # scikit-fem's bridge does the facet matching and orientation from cell sets
    out_cells = [meshio.CellBlock(cell_type, cells)]
    if len(facets):
        out_cells.append(meshio.CellBlock(facet_type, facets))
    empty = np.zeros(0, dtype=np.int64)
    cell_sets = {}
    for name in set(sub_tags) | set(bnd_tags):
        cell_sets[name] = [sub_tags.get(name, empty)] + (
            [bnd_tags.get(name, empty)] if len(facets) else []
        )
    cell_data = {}
    skfem_keys = [k for k in (m.cell_data or {}) if k.startswith("skfem:")]
    for key in skfem_keys:
        values = np.concatenate([np.asarray(m.cell_data[key][i]).ravel() for i in dom_blocks])
        cell_data[key] = [values] + (
            [np.zeros(len(facets), dtype=values.dtype)] if len(facets) else []
        )
    clean = meshio.Mesh(points, out_cells, cell_sets=cell_sets, cell_data=cell_data)
    mesh = _skfem_from_meshio(clean, ignore_orientation=nfc not in (2, 3))
    mesh = _only_own_kind(mesh, set(sub_tags), set(bnd_tags), skfem_keys)
    return _keep_empty_groups(m, mesh, top, src)


def _keep_empty_groups(m: meshio.Mesh, mesh: Mesh, top: int, src) -> Mesh:
    """Named physical groups of the domain or facet dimension that hold no elements: warn, naming
    them, and keep them as empty tags (a tag that silently vanished would leave a later
    "unknown tag" error without its cause)."""
    empty: dict[str, list[str]] = {"boundary": [], "subdomain": []}
    for name, value in (m.field_data or {}).items():
        value = np.asarray(value).ravel()
        if value.size < 2:
            continue
        dim = int(value[1])
        kind = "subdomain" if dim == top else "boundary" if dim == top - 1 else None
        have = mesh.subdomains if kind == "subdomain" else mesh.boundaries
        if kind is not None and str(name) not in (have or {}):
            empty[kind].append(str(name))
    if not (empty["boundary"] or empty["subdomain"]):
        return mesh
    listed = "; ".join(f"{k} group(s) {sorted(v)}" for k, v in empty.items() if v)
    warnings.warn(
        f"{src}: {listed} named in the file hold no elements. They are kept as empty tags (count "
        "0). Check the physical groups in Gmsh: each must contain the curves/surfaces (or "
        "volumes) that carry the elements, and the mesh must be saved after meshing them.",
        EmptyGroupWarning, stacklevel=4,
    )
    bnd = dict(mesh._boundaries or {})
    sub = dict(mesh._subdomains or {})
    for name in empty["boundary"]:
        bnd[name] = np.zeros(0, dtype=np.int64)
    for name in empty["subdomain"]:
        sub[name] = np.zeros(0, dtype=np.int64)
    mesh._boundaries = bnd or None
    mesh._subdomains = sub or None
    return mesh


def _only_own_kind(
    mesh: Mesh, sub_names: set[str], bnd_names: set[str], skfem_keys: list[str]
) -> Mesh:
    """Keep subdomain names among subdomains and boundary names among boundaries.

    One meshio cell set carries both when a boundary and a subdomain share a name (two unnamed
    Gmsh groups with the same number); scikit-fem then files the set under both.
    """
    sub_names = sub_names | {k.split(":", 2)[2] for k in skfem_keys if k.startswith("skfem:s:")}
    bnd_names = bnd_names | {k.split(":", 2)[2] for k in skfem_keys if k.startswith("skfem:b:")}
    subs = {k: v for k, v in (mesh._subdomains or {}).items() if k in sub_names and len(v)}
    bnds = {k: v for k, v in (mesh._boundaries or {}).items() if k in bnd_names}
    mesh._subdomains = subs or None
    mesh._boundaries = bnds or None
    return mesh


def _drop_unused_nodes(points, cells, facets, bnd_tags, src, cell_type, n_unused):
    """Drop nodes no element uses, renumber cells and facets; warn if the file had any."""
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
        warnings.warn(msg, MeshRepairWarning, stacklevel=4)
    return new_id[cells], new_id[facets[keep]], bnd_tags, points[used], used


def _bbox_size(points: NDArray) -> float:
    return float(np.ptp(points, axis=0).max()) if len(points) > 1 else 0.0


def _check_duplicates(points: NDArray, old_ids: NDArray, src) -> None:
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


def _check_measures(points: NDArray, cells: NDArray, cell_type: str, kind: str, src) -> NDArray:
    ncorner = _DOMAIN_TYPES[cell_type][1]
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
        warnings.warn(
            f"{src}: {len(inverted)} of {len(cells)} {cell_type} elements were inverted "
            f"(negative orientation, first: {int(inverted[0])}); reordered their nodes.",
            MeshRepairWarning,
            stacklevel=4,
        )
    return cells


# --- writing --------------------------------------------------------------------------------
def _vertex_mesh(mesh: Mesh, path: Path) -> tuple[NDArray, str, NDArray]:
    """Vertex coordinates (padded to 3D), meshio cell type and first-order cells of a mesh."""
    nv = mesh.nvertices
    points = np.zeros((nv, 3))
    points[:, : mesh.p.shape[0]] = mesh.p[:, :nv].T
    refdom = mesh.elem.refdom.__name__
    kinds = CELL_NAMES
    if refdom not in kinds:
        raise UnsupportedCellError(
            f"cannot write a {type(mesh).__name__}: its reference element {refdom!r} has no "
            f"meshio cell type. Supported are {sorted(kinds.values())}.",
            path,
        )
    t = mesh.t
    if isinstance(mesh, (MeshHex1, MeshHex2)):
        t = t[HEX_MAPPING[:8]]
    return points, kinds[refdom], np.ascontiguousarray(t.T)


def _split_field(name: str, value: ArrayLike, mesh: Mesh, lead: tuple[int, ...], path: Path):
    """Return ("point" | "cell", array) for one field; ``lead`` are leading (time) dims."""
    if not isinstance(name, str) or not name:
        raise ShapeError(f"{path}: field names must be non-empty strings, got {name!r}.")
    arr = np.array(value, copy=True)
    nl = len(lead)
    if arr.ndim not in (nl + 1, nl + 2) or arr.shape[:nl] != lead:
        want = "(T, n) or (T, n, k)" if nl else "(n,) or (n, k)"
        raise ShapeError(
            f"{path}: field {name!r} has shape {arr.shape}; expected {want}"
            + (f" with T = len(times) = {lead[0]}" if nl else "")
            + f", n = {mesh.nvertices} vertices or {mesh.nelements} elements."
        )
    n = arr.shape[nl]
    if n == mesh.nvertices:
        return "point", arr
    if n == mesh.p.shape[1]:  # all nodes of a second-order mesh: vertices come first
        return "point", arr[(slice(None),) * nl + (slice(0, mesh.nvertices),)]
    if n == mesh.nelements:
        return "cell", arr
    raise ShapeError(
        f"{path}: field {name!r} has {n} values per {'time step' if nl else 'field'}; expected "
        f"{mesh.nvertices} (one per vertex)"
        + (f", {mesh.p.shape[1]} (one per node)" if mesh.p.shape[1] != mesh.nvertices else "")
        + f" or {mesh.nelements} (one per element)."
    )


@contextlib.contextmanager
def _working_directory(folder: Path):
    # meshio's TimeSeriesWriter puts the .h5 file in the working directory, and the .xdmf file
    # refers to it by bare name: write both from the target folder so that they stay together
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def write_fields(
    path: str | os.PathLike,
    mesh: Mesh,
    fields: Mapping[str, ArrayLike],
    times: Sequence[float] | ArrayLike | None = None,
) -> Path:
    """Write nodal and per-element fields on a mesh for visualisation (ParaView, meshio).

    Parameters
    ----------
    path
        Output file. Without ``times`` any meshio format chosen by the suffix (``.vtu``
        recommended); with ``times`` it must end in ``.xdmf`` (or ``.xmf``) and an HDF5 file
        with the same stem is written beside it. Parent folders are created.
    mesh
        The scikit-fem mesh. Only its vertices and first-order cells are written, so fields on
        second-order meshes are written at the vertices (nodal values given on all nodes are
        cut to the vertices, which scikit-fem numbers first).
    fields
        Name -> values. Length ``mesh.nvertices`` (or all nodes of a P2 mesh) gives point data,
        length ``mesh.nelements`` gives cell data; a trailing axis makes a vector/tensor field,
        e.g. ``(nvertices, dim)``. If ``nvertices == nelements`` the field is taken as nodal.
        With ``times`` every field has a leading axis of length ``len(times)``. The arrays are
        copied, never modified.
    times
        Optional increasing time values; selects the XDMF time-series output.

    Returns
    -------
    pathlib.Path
        The file written (the ``.xdmf`` file for a time series).

    Raises
    ------
    femoe.errors.MeshFormatError
        The suffix is not a format meshio writes, or a time series is not ``.xdmf``.
    femoe.errors.ShapeError
        A field does not match the mesh (or the number of time steps).
    """
    path = Path(path)
    if not isinstance(fields, Mapping):
        raise ShapeError(
            f"{path}: fields must be a dict name -> array, got {type(fields).__name__}."
        )
    if times is None:
        suffixes = sorted(
            s
            for s, fmts in meshio.extension_to_filetypes.items()
            if any(f in meshio._helpers._writer_map for f in fmts)
        )
        if not any(path.name.lower().endswith(s) for s in suffixes):
            raise MeshFormatError(
                f"cannot tell the output format from the file name (suffix {path.suffix!r}). "
                f"Use one of {suffixes}; .vtu is the usual choice.",
                path,
            )
        lead: tuple[int, ...] = ()
    else:
        times = np.asarray(times, dtype=np.float64).ravel()
        if path.suffix.lower() not in (".xdmf", ".xmf"):
            raise MeshFormatError(
                "time series are written as XDMF; give the file the suffix .xdmf.", path
            )
        if len(times) == 0:
            raise ShapeError(f"{path}: times is empty; give at least one time value.")
        lead = (len(times),)
    points, cell_type, cells = _vertex_mesh(mesh, path)
    point_data, cell_data = {}, {}
    for name, value in fields.items():
        where, arr = _split_field(name, value, mesh, lead, path)
        (point_data if where == "point" else cell_data)[name] = arr
    path.parent.mkdir(parents=True, exist_ok=True)
    if times is None:
        meshio.write(
            path,
            meshio.Mesh(
                points,
                [(cell_type, cells)],
                point_data=point_data,
                cell_data={k: [v] for k, v in cell_data.items()},
            ),
        )
    else:
        target = path.resolve()
        with _working_directory(target.parent), meshio.xdmf.TimeSeriesWriter(target.name) as w:
            w.write_points_cells(points, [(cell_type, cells)])
            for i, t in enumerate(times):
                w.write_data(
                    float(t),
                    point_data={k: v[i] for k, v in point_data.items()},
                    cell_data={k: [v[i]] for k, v in cell_data.items()},
                )
    logger.info("wrote %s (%d fields)", path, len(fields))
    return path
