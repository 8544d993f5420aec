"""A summary of a mesh as a plain (JSON-ready) dictionary."""

from __future__ import annotations

from typing import Any

import numpy as np
from skfem import Mesh

from femoe.mesh._formats import CELL_NAMES
from femoe.mesh.quality import aspect_ratios, element_measures

_SECOND_ORDER = {
    "triangle": "triangle6",
    "quad": "quad9",
    "tetra": "tetra10",
    "hexahedron": "hexahedron27",
}


def _tag_sizes(tags: dict | None) -> dict[str, int]:
    return {str(k): int(len(v)) for k, v in sorted((tags or {}).items())}


def mesh_info(mesh: Mesh) -> dict[str, Any]:
    """Describe a mesh: element type and counts, extent, tags and element quality.

    Parameters
    ----------
    mesh
        A scikit-fem mesh, e.g. from :func:`femoe.mesh.read_mesh`.

    Returns
    -------
    dict
        JSON-serialisable, with keys

        ``mesh_type``
            scikit-fem class name, e.g. ``"MeshTri1"``;
        ``cell_type``
            meshio name of the element, e.g. ``"triangle"`` or ``"tetra10"``;
        ``dim``
            spatial (= element) dimension;
        ``n_elements``, ``n_vertices``, ``n_nodes``, ``n_facets``, ``n_boundary_facets``
            counts (``n_nodes`` includes the mid nodes of second-order meshes);
        ``bbox``
            ``{"min": [...], "max": [...]}``;
        ``boundaries``, ``subdomains``
            tag name -> number of facets / elements;
        ``quality``
            ``min_measure``, ``max_measure``, ``total_measure`` (length/area/volume, see
            :func:`~femoe.mesh.quality.element_measures`) and ``max_aspect_ratio``,
            ``mean_aspect_ratio`` (1 is ideal, see :func:`~femoe.mesh.quality.aspect_ratios`).
    """
    refdom = mesh.elem.refdom.__name__
    cell = CELL_NAMES.get(refdom, refdom)
    second_order = mesh.p.shape[1] > mesh.nvertices
    if second_order:
        cell = _SECOND_ORDER.get(cell, cell)
    vertices = mesh.p[:, : mesh.nvertices]
    measures = element_measures(mesh)
    ratios = aspect_ratios(mesh)
    return {
        "mesh_type": type(mesh).__name__,
        "cell_type": cell,
        "dim": int(mesh.dim()),
        "n_elements": int(mesh.nelements),
        "n_vertices": int(mesh.nvertices),
        "n_nodes": int(mesh.p.shape[1]),
        "n_facets": int(mesh.nfacets),
        "n_boundary_facets": int(len(mesh.boundary_facets())),
        "bbox": {"min": vertices.min(axis=1).tolist(), "max": vertices.max(axis=1).tolist()},
        "boundaries": _tag_sizes(mesh.boundaries),
        "subdomains": _tag_sizes(mesh.subdomains),
        "quality": {
            "min_measure": float(measures.min()),
            "max_measure": float(measures.max()),
            "total_measure": float(measures.sum()),
            "max_aspect_ratio": float(ratios.max()),
            "mean_aspect_ratio": float(np.mean(ratios)),
        },
    }
