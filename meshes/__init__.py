"""The bundled mesh files (Gmsh ``.msh``), shipped as package data so that a regular
(non-editable) install finds them beside the ``problems`` package. ``make_meshes.py`` rebuilds
them with gmsh."""
