"""Every way a mesh file can be unusable gives a clear femoe error (or a repair and a warning).

``BROKEN`` is shared with tests/test_mesh_cli.py, which runs the same files through
``femoe mesh info``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import meshio
import numpy as np
import pytest
from skfem import MeshTet2, MeshTri1
from skfem.io.meshio import to_meshio
from skfem.quadrature import get_quadrature

from femoe.errors import (
    DegenerateElementError,
    DuplicateNodesError,
    MeshError,
    MeshFileNotFoundError,
    MeshFormatError,
    MeshReadError,
    MeshRepairWarning,
    MixedCellTypesError,
    UnsupportedCellError,
)
from femoe.mesh import element_measures, read_mesh
from femoe.mesh.quality import _signed_measures

PLATE = Path(__file__).resolve().parents[1] / "meshes" / "plate_with_holes.msh"

# a 2x2-square triangle mesh with consistently counter-clockwise elements
SQUARE_POINTS = np.array(
    [[0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 1, 0], [1, 1, 0], [2, 1, 0]], dtype=float
)
SQUARE_TRIS = np.array([[0, 1, 4], [0, 4, 3], [1, 2, 5], [1, 5, 4]])
SQUARE_BOTTOM = np.array([[0, 1], [1, 2]])


def _write(path: Path, points, cells, **kw) -> Path:
    # meshio would pick ANSYS for .msh; Gmsh 2.2 needs no entity information
    fmt = "gmsh22" if path.suffix == ".msh" else None
    meshio.write(path, meshio.Mesh(points, cells, **kw), file_format=fmt)
    return path


def _missing(tmp: Path) -> Path:
    return tmp / "nowhere" / "missing.msh"


def _unknown_suffix(tmp: Path) -> Path:
    (p := tmp / "mesh.foo").write_text("anything")
    return p


def _no_suffix(tmp: Path) -> Path:
    (p := tmp / "mesh").write_bytes(PLATE.read_bytes())
    return p


def _truncated(tmp: Path) -> Path:
    data = PLATE.read_bytes()
    (p := tmp / "truncated.msh").write_bytes(data[: len(data) // 2])
    return p


def _random_msh(tmp: Path) -> Path:
    (p := tmp / "random.msh").write_bytes(np.random.default_rng(1).bytes(4096))
    return p


def _random_vtu(tmp: Path) -> Path:
    (p := tmp / "random.vtu").write_bytes(np.random.default_rng(2).bytes(4096))
    return p


def _vertices_only(tmp: Path) -> Path:
    return _write(tmp / "points.vtu", SQUARE_POINTS, [("vertex", np.arange(6)[:, None])])


def _wedges_only(tmp: Path) -> Path:
    points = np.vstack([SQUARE_POINTS[[0, 1, 3]], SQUARE_POINTS[[0, 1, 3]] + [0, 0, 1]])
    return _write(tmp / "wedge.vtu", points, [("wedge", np.array([[0, 1, 2, 3, 4, 5]]))])


def _pyramids_only(tmp: Path) -> Path:
    points = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0.5, 0.5, 1]], dtype=float)
    return _write(tmp / "pyramid.vtu", points, [("pyramid", np.array([[0, 1, 2, 3, 4]]))])


def _mixed(tmp: Path) -> Path:
    return _write(
        tmp / "mixed.vtu",
        SQUARE_POINTS,
        [("triangle", np.array([[0, 1, 4], [0, 4, 3]])), ("quad", np.array([[1, 2, 5, 4]]))],
    )


def _zero_measure(tmp: Path) -> Path:
    points = np.vstack([SQUARE_POINTS, [[1.5, 0.0, 0.0]]])  # node 6 on the bottom edge
    tris = np.vstack([SQUARE_TRIS, [[0, 6, 2]]])  # element 4: nodes 0, 6, 2 are collinear
    return _write(tmp / "flat.vtu", points, [("triangle", tris)])


def _duplicates(tmp: Path) -> Path:
    points = np.vstack([SQUARE_POINTS, SQUARE_POINTS[[4]]])  # node 6 is a copy of node 4
    tris = SQUARE_TRIS.copy()
    tris[2:] = np.where(tris[2:] == 4, 6, tris[2:])  # the right half uses the copy
    return _write(tmp / "cracked.vtu", points, [("triangle", tris)])


# name -> (writer, error class, regex the message must match)
BROKEN = {
    "missing": (_missing, MeshFileNotFoundError, r"not found.*Check the path"),
    "unknown_suffix": (_unknown_suffix, MeshFormatError, r"suffix '\.foo'.*file_format="),
    "no_suffix": (_no_suffix, MeshFormatError, r"no suffix.*\.msh"),
    "truncated": (_truncated, MeshReadError, r"truncated or corrupt"),
    "random_msh": (_random_msh, MeshReadError, r"as gmsh.*export it again"),
    "random_vtu": (_random_vtu, MeshReadError, r"as vtu.*export it again"),
    "vertices_only": (_vertices_only, UnsupportedCellError, r"only point cells \(6 vertex\)"),
    "wedges_only": (_wedges_only, UnsupportedCellError, r"1 wedge.*supported are line"),
    "pyramids_only": (_pyramids_only, UnsupportedCellError, r"1 pyramid.*supported are"),
    "mixed": (_mixed, MixedCellTypesError, r"mixes cell types \(1 quad, 2 triangle\).*single"),
    "zero_measure": (_zero_measure, DegenerateElementError, r"1 of 5 triangle elements.*\[4\]"),
    "duplicates": (_duplicates, DuplicateNodesError, r"1 pairs.*nodes 4 and 6.*Coherence.*unique"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_file_raises(tmp_path, case):
    make, error, pattern = BROKEN[case]
    path = make(tmp_path)
    with pytest.raises(error) as info:
        read_mesh(path)
    message = str(info.value)
    assert str(path) in message  # names the file
    assert re.search(pattern, message, flags=re.S), message
    assert isinstance(info.value, MeshError) and isinstance(info.value, ValueError)
    assert info.value.path == str(path)


def test_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_mesh(tmp_path / "missing.vtu")


def test_unknown_file_format_argument(tmp_path):
    with pytest.raises(MeshFormatError, match="unknown file_format 'gmsh5'.*Pick one of"):
        read_mesh(PLATE, file_format="gmsh5")
    # the argument rescues a file without suffix
    assert read_mesh(_no_suffix(tmp_path), file_format="gmsh").nvertices > 0


def test_polygon_cells_are_unsupported():
    from femoe.mesh import from_meshio

    m = meshio.Mesh(SQUARE_POINTS[:, :2], [("polygon", np.array([[0, 1, 2, 5, 4, 3]]))])
    with pytest.raises(UnsupportedCellError, match="polygon"):
        from_meshio(m)


def test_surface_in_3d_is_refused(tmp_path):
    points = SQUARE_POINTS.copy()
    points[:, 2] = points[:, 0] ** 2  # a curved surface
    path = _write(tmp_path / "surface.vtu", points, [("triangle", SQUARE_TRIS)])
    with pytest.raises(UnsupportedCellError, match="flat"):
        read_mesh(path)


def test_inverted_elements_are_repaired(tmp_path):
    tris = SQUARE_TRIS.copy()
    tris[[1, 3]] = tris[[1, 3]][:, ::-1]  # clockwise
    path = _write(
        tmp_path / "inverted.msh",
        SQUARE_POINTS,
        [("line", SQUARE_BOTTOM), ("triangle", tris)],
        cell_data={
            "gmsh:physical": [np.array([1, 1]), np.array([2, 2, 2, 2])],
            "gmsh:geometrical": [np.array([1, 1]), np.array([1, 1, 1, 1])],
        },
        field_data={"bottom": np.array([1, 1]), "domain": np.array([2, 2])},
    )
    with pytest.warns(MeshRepairWarning, match=r"2 of 4 triangle elements were inverted"):
        mesh = read_mesh(path)
    # (MeshTri1 then sorts each element's nodes, scikit-fem's convention for triangles)
    assert np.array_equal(np.sort(mesh.t, axis=0), np.sort(SQUARE_TRIS.T, axis=0))
    bottom = mesh.facets[:, mesh.boundaries["bottom"]]
    assert np.all(mesh.p[1, bottom] == 0.0) and bottom.shape[1] == 2
    assert len(mesh.subdomains["domain"]) == 4


def test_inverted_quads_are_repaired(tmp_path):
    quads = np.array([[0, 1, 4, 3], [1, 4, 5, 2]])  # the second one clockwise
    path = _write(tmp_path / "quads.vtu", SQUARE_POINTS, [("quad", quads)])
    with pytest.warns(MeshRepairWarning, match=r"1 of 2 quad elements were inverted.*first: 1"):
        mesh = read_mesh(path)
    X, _ = get_quadrature(mesh.elem.refdom, 2)
    assert np.all(mesh._mapping().detDF(X) > 0)
    assert element_measures(mesh) == pytest.approx([1.0, 1.0])


def test_inverted_second_order_tetra_keep_mid_nodes(tmp_path):
    p2 = MeshTet2().refined(1)
    m = to_meshio(p2, encode_cell_data=False)
    cells = m.cells_dict["tetra10"]
    measures = _signed_measures(m.points, cells[:, :4], "tetra")
    flip = [0, 2, 1, 3, 6, 5, 4, 7, 9, 8]
    cells = np.where((measures > 0)[:, None], cells[:, flip], cells)  # invert the good ones
    path = _write(tmp_path / "tet10.vtu", m.points, [("tetra10", cells)])
    with pytest.warns(MeshRepairWarning, match="inverted"):
        mesh = read_mesh(path)
    assert isinstance(mesh, MeshTet2) and mesh.nelements == p2.nelements
    X, _ = get_quadrature(mesh.elem.refdom, 2)
    assert np.all(mesh._mapping().detDF(X) > 0)
    # the mid nodes still sit in the middle of their edges
    mids = mesh.p[:, mesh.dofs.element_dofs[4:]]  # (dim, 6, nelements)
    corners = mesh.p[:, mesh.t]
    for k, (a, b) in enumerate([(0, 1), (1, 2), (0, 2), (0, 3), (1, 3), (2, 3)]):
        assert np.allclose(mids[:, k], 0.5 * (corners[:, a] + corners[:, b]))


def test_unreferenced_nodes_are_dropped(tmp_path):
    stray = np.array([[5.0, 5.0, 0.0], [6.0, 5.0, 0.0]])
    points = np.vstack([stray, SQUARE_POINTS])  # two unused nodes first: all ids shift by 2
    path = _write(
        tmp_path / "stray.msh",
        points,
        [("line", SQUARE_BOTTOM + 2), ("triangle", SQUARE_TRIS + 2)],
        cell_data={
            "gmsh:physical": [np.array([7, 7]), np.array([8, 8, 8, 8])],
            "gmsh:geometrical": [np.array([1, 1]), np.array([1, 1, 1, 1])],
        },
        field_data={"bottom": np.array([7, 1]), "domain": np.array([8, 2])},
    )
    with pytest.warns(MeshRepairWarning, match=r"2 of 8 nodes are used by no triangle"):
        mesh = read_mesh(path)
    assert mesh.nvertices == 6
    assert np.allclose(np.sort(mesh.p[0]), np.sort(SQUARE_POINTS[:, 0]))
    assert mesh.p[:, :].max() <= 2.0  # the stray nodes are gone
    bottom = mesh.facets[:, mesh.boundaries["bottom"]]
    assert bottom.shape[1] == 2 and np.all(mesh.p[1, bottom] == 0.0)
    assert np.allclose(sorted(mesh.p[0, np.unique(bottom)]), [0.0, 1.0, 2.0])


def test_valid_mesh_reads_without_warnings(tmp_path):
    path = _write(tmp_path / "ok.vtu", SQUARE_POINTS, [("triangle", SQUARE_TRIS)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mesh = read_mesh(path)
    assert isinstance(mesh, MeshTri1) and mesh.nelements == 4
    assert mesh.boundaries is None and mesh.subdomains is None
