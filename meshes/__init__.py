"""The bundled mesh files (Gmsh ``.msh``): :data:`MESH_DIR`.

The repository keeps them at its top level (``meshes/``); they are installed as package data of
``femoe.meshes`` (pyproject's ``package-dir``), so a regular (non-editable) install finds them.
``make_meshes.py`` rebuilds them with gmsh.

>>> import femoe
>>> from femoe.meshes import MESH_DIR
>>> mesh = femoe.read_mesh(MESH_DIR / "plate_with_holes.msh")   # doctest: +SKIP
"""

from pathlib import Path

__all__ = ["MESH_DIR"]

#: the folder that holds the bundled ``.msh`` files (in the repository or in site-packages)
MESH_DIR: Path = Path(__file__).resolve().parent
