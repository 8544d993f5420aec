"""What femoe needs to know about meshio: formats, cell type names, the XDMF series writer.

This is the one module of femoe that relies on meshio beyond its documented API, so that a
meshio upgrade is checked here:

* format detection -- which formats meshio reads (``meshio._helpers.reader_map``), which file
  suffixes it writes (``meshio._helpers._writer_map``) and the formats to try for a file name
  (:func:`candidate_formats`);
* meshio's cell type names: the element types femoe accepts (:data:`DOMAIN_TYPES`), their
  facets (:data:`FACETS`), the scikit-fem reference domains they map to (:data:`CELL_NAMES`)
  and the dimension of a type (:func:`cell_dim`);
* :class:`XdmfSeriesWriter`, meshio's XDMF time-series writer with its HDF5 file beside the
  ``.xdmf`` file (meshio puts it in the working directory).
"""

from __future__ import annotations

from pathlib import Path

import meshio

from femoe.errors import MeshFormatError

#: scikit-fem reference domain -> meshio cell type of the first-order element
CELL_NAMES = {
    "RefLine": "line",
    "RefTri": "triangle",
    "RefQuad": "quad",
    "RefTet": "tetra",
    "RefHex": "hexahedron",
    "RefWedge": "wedge",
}

#: meshio cell type -> (first-order kind, number of corner nodes); the element types femoe reads
DOMAIN_TYPES: dict[str, tuple[str, int]] = {
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
#: kind -> (meshio type of its first-order facets, the facet types that match them)
FACETS: dict[str, tuple[str, tuple[str, ...]]] = {
    "line": ("vertex", ("vertex",)),
    "triangle": ("line", ("line", "line3")),
    "quad": ("line", ("line", "line3")),
    "tetra": ("triangle", ("triangle", "triangle6")),
    "hexahedron": ("quad", ("quad", "quad8", "quad9")),
}
#: first-order facet type -> number of corner nodes
FACET_CORNERS = {"vertex": 1, "line": 2, "triangle": 3, "quad": 4}


def cell_dim(cell_type: str) -> int:
    """Topological dimension of a meshio cell type, -1 for one femoe does not know."""
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


def supported_list() -> str:
    """The element types femoe reads, for error messages."""
    return ", ".join(DOMAIN_TYPES)


def candidate_formats(path: Path, file_format: str | None) -> list[str]:
    """meshio formats to try for ``path``, most likely first.

    Raises :class:`~femoe.errors.MeshFormatError` for a ``file_format`` meshio does not read
    and, without ``file_format``, for a file name whose suffix names no format.
    """
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


def writer_suffixes() -> list[str]:
    """File suffixes (``".vtu"``, ...) of the formats meshio writes, sorted."""
    return sorted(
        s
        for s, fmts in meshio.extension_to_filetypes.items()
        if any(f in meshio._helpers._writer_map for f in fmts)
    )


class XdmfSeriesWriter(meshio.xdmf.TimeSeriesWriter):
    """meshio's XDMF time-series writer, with the HDF5 file beside the ``.xdmf`` file.

    meshio opens ``<stem>.h5`` relative to the working directory and has the ``.xdmf`` file
    refer to it by that bare name, which XDMF readers (ParaView, meshio) resolve relative to
    the ``.xdmf`` file: the pair only works when written from the ``.xdmf`` file's folder.
    This writer opens the HDF5 file at ``<folder of the .xdmf>/<stem>.h5`` instead; meshio
    still refers to it by its bare name (``os.path.basename`` of :attr:`h5_filename`), now
    the right name relative to the ``.xdmf`` file. Always HDF5 data; use as meshio's writer::

        with XdmfSeriesWriter(path) as w:
            w.write_points_cells(points, cells)
            w.write_data(t, point_data=..., cell_data=...)
    """

    def __init__(self, filename: str | Path) -> None:
        super().__init__(filename, data_format="HDF")

    def __enter__(self):
        import h5py  # as meshio does: only time series need it

        # meshio's __enter__ does only this, with ``self.filename.stem + ".h5"`` as the name
        self.h5_filename = str(self.filename.with_suffix(".h5"))
        self.h5_file = h5py.File(self.h5_filename, "w")
        return self
