"""Tag names of a mesh file: physical groups, cell sets and other tag arrays.

:func:`~femoe.mesh.read.from_meshio` uses these helpers to turn a file's tags into the
``boundaries`` (facet tags) and ``subdomains`` (element tags) of the scikit-fem mesh. Names, in
this order of precedence (:func:`collect_tags`):

1. ``gmsh:physical`` cell data (Gmsh 2.2 and 4.1, and VTU/XDMF files converted from them),
   named by the Gmsh ``$PhysicalNames`` (meshio ``field_data``) of the same dimension;
2. meshio ``cell_sets`` (Gmsh 4.1, Abaqus element sets, ...) not already named above;
   Gmsh's internal sets (``gmsh:bounding_entities`` and the like) are dropped;
3. other integer tag arrays (:data:`INTEGER_TAG_KEYS`: ``medit:ref``, ``CellEntityIds``, ...);
4. scikit-fem's own ``skfem:s:*`` / ``skfem:b:*`` encoding (files written by scikit-fem), which
   scikit-fem's bridge decodes; :func:`only_own_kind` keeps those names in their kind.

**Unnamed tags** (a physical group without a name, a VTU file that lost the Gmsh names, a Medit
reference) are keyed by their number as a string, e.g. ``mesh.boundaries["3"]``. Gmsh tag 0
("no physical group") is not a tag. Named groups without elements are kept as empty tags, with
an :class:`~femoe.errors.EmptyGroupWarning` (:func:`keep_empty_groups`).
"""

from __future__ import annotations

import warnings

import meshio
import numpy as np
from numpy.typing import NDArray
from skfem import Mesh

from femoe.errors import EmptyGroupWarning
from femoe.mesh._formats import cell_dim

#: integer cell-data arrays that other formats use for tags (named by their number)
INTEGER_TAG_KEYS = (
    "medit:ref",
    "CellEntityIds",
    "cell_tags",
    "tetgen:ref",
    "ugrid:ref",
    "flac3d:zone",
    "avsucd:material",
)


def field_names(m: meshio.Mesh) -> dict[tuple[int, int], str]:
    """Gmsh physical names: ``(tag, dimension) -> name`` from meshio ``field_data``."""
    names = {}
    for name, value in (m.field_data or {}).items():
        value = np.asarray(value).ravel()
        if value.size >= 2:
            names[(int(value[0]), int(value[1]))] = str(name)
    return names


def collect_tags(
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
        names = field_names(m)
        for b in blocks:
            values = np.asarray(cell_data["gmsh:physical"][b]).ravel().astype(np.int64)
            dim = cell_dim(m.cells[b].type)
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
        for key in INTEGER_TAG_KEYS:
            if key in cell_data:
                for b in blocks:
                    values = np.asarray(cell_data[key][b]).ravel()
                    for tag in np.unique(values):
                        add(str(int(tag)), b, np.flatnonzero(values == tag))
                break
    return tags


def keep_empty_groups(m: meshio.Mesh, mesh: Mesh, top: int, src) -> Mesh:
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
    # stacklevel 4: this function, from_meshio, read_mesh, the caller of read_mesh
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


def only_own_kind(
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
