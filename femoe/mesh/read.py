"""Read mesh files into scikit-fem meshes with named tags.

:func:`read_mesh` reads any format meshio reads (Gmsh 2.2/4.1 ASCII or binary, VTU, XDMF,
Medit, Abaqus...); :func:`from_meshio` converts a :class:`meshio.Mesh` already in memory. The
conversion itself is scikit-fem's own bridge, :func:`skfem.io.meshio.from_meshio`; this module
prepares its input:

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
* Tag names come from the file's physical groups, cell sets or tag arrays, in the order of
  precedence given in :mod:`femoe.mesh.tags`; unnamed tags are keyed by their number as a
  string (``mesh.boundaries["3"]``).

Reading fails first on the file: missing (:class:`~femoe.errors.MeshFileNotFoundError`),
unknown format (:class:`~femoe.errors.MeshFormatError`, see :mod:`femoe.mesh._formats`) or
unreadable (:class:`~femoe.errors.MeshReadError`); then on its content, checked and repaired as
listed in :mod:`femoe.mesh.validate`.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import meshio
import numpy as np
from skfem import Mesh
from skfem.io.meshio import from_meshio as _skfem_from_meshio

from femoe.errors import MeshFileNotFoundError, MeshReadError
from femoe.mesh._formats import (
    DOMAIN_TYPES,
    FACET_CORNERS,
    FACETS,
    candidate_formats,
    cell_dim,
)
from femoe.mesh.tags import collect_tags, keep_empty_groups, only_own_kind
from femoe.mesh.validate import (
    check_duplicates,
    check_finite,
    check_measures,
    domain_cell_type,
    drop_unused_nodes,
    flat_coordinates,
)

logger = logging.getLogger(__name__)


def _read_meshio(path: Path, file_format: str | None) -> meshio.Mesh:
    if not path.exists():
        raise MeshFileNotFoundError(
            f"mesh file not found (working directory: {Path.cwd()}). Check the path.", path
        )
    if path.is_dir():
        raise MeshReadError("is a folder, not a mesh file. Give the path of a mesh file.", path)
    formats = candidate_formats(path, file_format)
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
        file has no such tags. See :mod:`femoe.mesh.tags` for how tags are named.

    Raises
    ------
    femoe.errors.MeshFileNotFoundError, femoe.errors.MeshFormatError,
    femoe.errors.MeshReadError, femoe.errors.UnsupportedCellError,
    femoe.errors.MixedCellTypesError, femoe.errors.DuplicateNodesError,
    femoe.errors.DegenerateElementError
        See the module documentation and :mod:`femoe.mesh.validate`.

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
    check_finite(m.points, src)
    blocks = list(m.cells)
    cell_type, top, found = domain_cell_type(blocks, src)
    kind = DOMAIN_TYPES[cell_type][0]
    facet_type, facet_sources = FACETS[kind]
    nfc = FACET_CORNERS[facet_type]

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
    ignored = sorted({b.type for b in blocks if cell_dim(b.type) < top - 1})
    if ignored:
        logger.debug("%s: ignoring cells of types %s (below facet dimension)", src, ignored)
    sub_tags = {
        k: np.unique(np.concatenate(v)) for k, v in collect_tags(m, dom_blocks, dom_off).items()
    }
    bnd_tags = {
        k: np.unique(np.concatenate(v)) for k, v in collect_tags(m, fac_blocks, fac_off).items()
    }

    points = flat_coordinates(m.points, cells, top, found, src)
    cells, facets, bnd_tags, points, old_ids = drop_unused_nodes(
        points, cells, facets, bnd_tags, src, cell_type, n_unused=len(points) - len(referenced)
    )
    check_duplicates(points, old_ids, src)
    cells = check_measures(points, cells, cell_type, kind, src)
    ncorner = DOMAIN_TYPES[cell_type][1]
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
    mesh = only_own_kind(mesh, set(sub_tags), set(bnd_tags), skfem_keys)
    return keep_empty_groups(m, mesh, top, src)
