"""Reading and writing under their historical module name.

The code lives in :mod:`femoe.mesh.read` (files in, tags, validation), :mod:`femoe.mesh.write`
(fields out) and the helpers these use; this module keeps ``from femoe.mesh.io import ...``
working for the names imported from it.
"""

from femoe.mesh._formats import CELL_NAMES
from femoe.mesh.read import from_meshio, read_mesh
from femoe.mesh.validate import DUPLICATE_RTOL
from femoe.mesh.write import write_fields

__all__ = ["CELL_NAMES", "DUPLICATE_RTOL", "from_meshio", "read_mesh", "write_fields"]
