"""Write nodal and per-element fields on a scikit-fem mesh for ParaView.

:func:`write_fields` writes one file in any format meshio writes (chosen by the suffix; ``.vtu``
is the usual one) or an XDMF time series: the ``.xdmf`` file plus an HDF5 file with the same
stem beside it, which the ``.xdmf`` file names relative to itself. The series is written
without touching the process's working directory (see
:class:`~femoe.mesh._formats.XdmfSeriesWriter`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import meshio
import numpy as np
from numpy.typing import ArrayLike, NDArray
from skfem import Mesh, MeshHex1, MeshHex2
from skfem.io.meshio import HEX_MAPPING

from femoe.errors import MeshFormatError, ShapeError, UnsupportedCellError
from femoe.mesh._formats import CELL_NAMES, XdmfSeriesWriter, writer_suffixes

logger = logging.getLogger(__name__)


def _vertex_mesh(mesh: Mesh, path: Path) -> tuple[NDArray, str, NDArray]:
    """Vertex coordinates (padded to 3D), meshio cell type and first-order cells of a mesh."""
    nv = mesh.nvertices
    points = np.zeros((nv, 3))
    points[:, : mesh.p.shape[0]] = mesh.p[:, :nv].T
    refdom = mesh.elem.refdom.__name__
    if refdom not in CELL_NAMES:
        raise UnsupportedCellError(
            f"cannot write a {type(mesh).__name__}: its reference element {refdom!r} has no "
            f"meshio cell type. Supported are {sorted(CELL_NAMES.values())}.",
            path,
        )
    t = mesh.t
    if isinstance(mesh, (MeshHex1, MeshHex2)):
        t = t[HEX_MAPPING[:8]]
    return points, CELL_NAMES[refdom], np.ascontiguousarray(t.T)


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
        suffixes = writer_suffixes()
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
        with XdmfSeriesWriter(path) as w:
            w.write_points_cells(points, [(cell_type, cells)])
            for i, t in enumerate(times):
                w.write_data(
                    float(t),
                    point_data={k: v[i] for k, v in point_data.items()},
                    cell_data={k: [v[i]] for k, v in cell_data.items()},
                )
    logger.info("wrote %s (%d fields)", path, len(fields))
    return path
