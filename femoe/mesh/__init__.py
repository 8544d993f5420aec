"""Mesh files in, fields out: reading with named tags, validation, quality, writing.

The data flow starts here: :func:`read_mesh` turns a mesh file into a scikit-fem mesh whose
``boundaries`` and ``subdomains`` carry the file's tag names; :func:`write_fields` writes
results back for ParaView; :func:`mesh_info` summarises a mesh (``femoe mesh info FILE``).

Modules: :mod:`~femoe.mesh.read` (reading, conversion), :mod:`~femoe.mesh.tags` (tag names),
:mod:`~femoe.mesh.validate` (read-time checks and repairs), :mod:`~femoe.mesh.write` (fields
out), :mod:`~femoe.mesh.quality` (measures, shape figures), :mod:`~femoe.mesh.info` (summary),
:mod:`~femoe.mesh._formats` (everything that depends on meshio's internals) and
:mod:`~femoe.mesh.io` (the historical import path of reading and writing).
"""

from femoe.mesh.info import mesh_info
from femoe.mesh.quality import DEGENERATE_RTOL, aspect_ratios, element_measures
from femoe.mesh.read import from_meshio, read_mesh
from femoe.mesh.validate import DUPLICATE_RTOL
from femoe.mesh.write import write_fields

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
