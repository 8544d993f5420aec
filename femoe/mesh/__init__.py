"""Mesh files in, fields out: reading with named tags, validation, quality, writing.

The data flow starts here: :func:`read_mesh` turns a mesh file into a scikit-fem mesh whose
``boundaries`` and ``subdomains`` carry the file's tag names; :func:`write_fields` writes
results back for ParaView; :func:`mesh_info` summarises a mesh (``femoe mesh info FILE``).
"""

from femoe.mesh.info import mesh_info
from femoe.mesh.io import DUPLICATE_RTOL, from_meshio, read_mesh, write_fields
from femoe.mesh.quality import DEGENERATE_RTOL, aspect_ratios, element_measures

__all__ = [
    "DEGENERATE_RTOL",
    "DUPLICATE_RTOL",
    "aspect_ratios",
    "element_measures",
    "from_meshio",
    "mesh_info",
    "read_mesh",
    "write_fields",
]
