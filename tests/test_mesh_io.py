"""Reading meshes with named tags, writing fields, quality figures (femoe.mesh)."""

from __future__ import annotations

import json
import math
import os
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import meshio
import numpy as np
import pytest
from skfem import (
    MeshHex1,
    MeshHex2,
    MeshLine1,
    MeshQuad1,
    MeshQuad2,
    MeshTet1,
    MeshTet2,
    MeshTri1,
    MeshTri2,
)
from skfem.io.meshio import to_meshio
from skfem.quadrature import get_quadrature

from femoe.errors import MeshFormatError, ShapeError
from femoe.mesh import (
    aspect_ratios,
    element_measures,
    from_meshio,
    mesh_info,
    read_mesh,
    write_fields,
)

MESHES = Path(__file__).resolve().parents[1] / "meshes"
HOLE_RADIUS = 0.2  # see meshes/make_meshes.py


def facet_measures(mesh, facets):
    """Length (2D) or area (3D) of the given facets; 1 for points."""
    x = mesh.p[:, mesh.facets[:, facets]]  # (dim, nfacet_nodes, n)
    if mesh.dim() == 1:
        return np.ones(len(facets))
    if mesh.dim() == 2:
        return np.linalg.norm(x[:, 1] - x[:, 0], axis=0)
    return 0.5 * np.linalg.norm(np.cross((x[:, 1] - x[:, 0]).T, (x[:, 2] - x[:, 0]).T), axis=1)


# --- bundled meshes -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def plate():
    return read_mesh(MESHES / "plate_with_holes.msh")


def test_interval():
    mesh = read_mesh(MESHES / "interval.msh")
    assert isinstance(mesh, MeshLine1)
    assert mesh.nelements == 64 and mesh.nvertices == 65
    assert set(mesh.boundaries) == {"left", "right"}
    assert mesh.p[0, mesh.facets[0, mesh.boundaries["left"]]].tolist() == [0.0]
    assert mesh.p[0, mesh.facets[0, mesh.boundaries["right"]]].tolist() == [1.0]
    assert set(mesh.subdomains) == {"domain"} and len(mesh.subdomains["domain"]) == 64


def test_plate_with_holes(plate):
    assert isinstance(plate, MeshTri1)
    assert 2000 <= plate.nvertices <= 5000
    assert set(plate.boundaries) == {"outer", "hole_1", "hole_2"}
    assert set(plate.subdomains) == {"domain"}  # no gmsh:bounding_entities
    assert len(plate.subdomains["domain"]) == plate.nelements
    circumference = 2 * math.pi * HOLE_RADIUS
    for name in ("hole_1", "hole_2"):
        length = facet_measures(plate, plate.boundaries[name]).sum()
        assert abs(length - circumference) < 0.02 * circumference
    assert facet_measures(plate, plate.boundaries["outer"]).sum() == pytest.approx(6.0, rel=1e-12)
    # the three tags cover the boundary exactly once
    tagged = np.concatenate([plate.boundaries[k] for k in plate.boundaries])
    assert np.array_equal(np.sort(tagged), np.sort(plate.boundary_facets()))
    # the holes are where make_meshes.py put them
    mid = plate.p[:, plate.facets[:, plate.boundaries["hole_1"]]].mean(axis=1)
    assert np.allclose(np.hypot(mid[0] - 0.5, mid[1] - 0.5), HOLE_RADIUS, rtol=0.01)
    area = 2.0 - 2 * math.pi * HOLE_RADIUS**2
    assert element_measures(plate).sum() == pytest.approx(area, rel=0.01)


def test_periodic_square_matching_sides():
    mesh = read_mesh(MESHES / "periodic_square.msh")
    assert set(mesh.boundaries) == {"left", "right", "bottom", "top"}
    assert 3000 <= mesh.nvertices <= 5000

    def side(name, axis):
        nodes = np.unique(mesh.facets[:, mesh.boundaries[name]])
        return np.sort(mesh.p[axis, nodes])

    assert np.allclose(side("left", 1), side("right", 1), atol=1e-10)
    assert np.allclose(side("bottom", 0), side("top", 0), atol=1e-10)
    for name in ("left", "right", "bottom", "top"):
        assert facet_measures(mesh, mesh.boundaries[name]).sum() == pytest.approx(1.0)


def test_box_tet_faces():
    mesh = read_mesh(MESHES / "box_tet.msh")
    assert isinstance(mesh, MeshTet1)
    assert 2000 <= mesh.nvertices <= 5000
    assert element_measures(mesh).sum() == pytest.approx(1.0)
    for axis, c in enumerate("xyz"):
        for name, value in ((f"{c}min", 0.0), (f"{c}max", 1.0)):
            facets = mesh.boundaries[name]
            assert np.all(mesh.p[axis, mesh.facets[:, facets]] == value)
            assert facet_measures(mesh, facets).sum() == pytest.approx(1.0)
    assert sum(len(v) for v in mesh.boundaries.values()) == len(mesh.boundary_facets())


# --- formats --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("file_format", "binary"),
    [("gmsh22", False), ("gmsh22", True), ("gmsh", False), ("gmsh", True)],
)
def test_gmsh_versions_keep_names(tmp_path, plate, file_format, binary):
    source = meshio.read(MESHES / "plate_with_holes.msh")
    source.cell_sets = {}  # let the writer work from gmsh:physical + field_data only
    path = tmp_path / f"plate_{file_format}_{binary}.msh"
    meshio.write(path, source, file_format=file_format, binary=binary)
    mesh = read_mesh(path)
    assert np.array_equal(mesh.p, plate.p) and np.array_equal(mesh.t, plate.t)
    assert {k: len(v) for k, v in mesh.boundaries.items()} == {
        k: len(v) for k, v in plate.boundaries.items()
    }
    assert {k: len(v) for k, v in mesh.subdomains.items()} == {"domain": plate.nelements}


@pytest.mark.parametrize("suffix", [".vtu", ".xdmf"])
def test_vtu_xdmf_unnamed_tags_are_numbers(tmp_path, plate, suffix):
    source = meshio.read(MESHES / "plate_with_holes.msh")
    physical = {name: int(tag) for name, (tag, _) in source.field_data.items()}
    # one block per cell type, as these writers want, carrying only the physical numbers
    types = ["line", "triangle"]
    cells = [(t, np.concatenate([b.data for b in source.cells if b.type == t])) for t in types]
    tags = [
        np.concatenate(
            [d for b, d in zip(source.cells, source.cell_data["gmsh:physical"]) if b.type == t]
        )
        for t in types
    ]
    path = tmp_path / f"plate{suffix}"
    meshio.write(path, meshio.Mesh(source.points, cells, cell_data={"gmsh:physical": tags}))
    mesh = read_mesh(path)
    assert np.allclose(mesh.p, plate.p)
    expect = {str(physical[k]): len(v) for k, v in plate.boundaries.items()}
    assert {k: len(v) for k, v in mesh.boundaries.items()} == expect
    assert {k: len(v) for k, v in mesh.subdomains.items()} == {
        str(physical["domain"]): plate.nelements
    }
    for name, number in physical.items():
        if name != "domain":
            assert np.array_equal(
                np.sort(mesh.boundaries[str(number)]), np.sort(plate.boundaries[name])
            )


def test_cell_sets_without_gmsh_data(tmp_path):
    # e.g. Abaqus element sets: names come from meshio cell_sets
    base = MeshQuad1().refined(2)
    m = to_meshio(base, encode_cell_data=False)
    left = np.flatnonzero(base.p[0, base.t].mean(axis=0) < 0.5)
    m.cell_sets = {"left_half": [left]}
    mesh = from_meshio(m)
    assert isinstance(mesh, MeshQuad1)
    assert np.array_equal(np.sort(mesh.subdomains["left_half"]), left)


@pytest.mark.filterwarnings("ignore::femoe.errors.MeshRepairWarning")
def test_skfem_encoded_tags_round_trip(tmp_path):
    base = MeshTri1().refined(3).with_boundaries({"bottom": lambda x: x[1] == 0.0})
    base = base.with_subdomains({"right": lambda x: x[0] > 0.5})
    path = tmp_path / "skfem.vtu"
    base.save(str(path))
    mesh = read_mesh(path)
    assert np.array_equal(np.sort(mesh.boundaries["bottom"]), np.sort(base.boundaries["bottom"]))
    assert np.array_equal(np.sort(mesh.subdomains["right"]), np.sort(base.subdomains["right"]))


# scikit-fem's own simplex meshes mix orientations (it sorts element nodes), so reading them
# back repairs (and reports) the inverted half
@pytest.mark.filterwarnings("ignore::femoe.errors.MeshRepairWarning")
@pytest.mark.parametrize(
    "cls",
    [MeshLine1, MeshTri1, MeshTri2, MeshQuad1, MeshQuad2, MeshTet1, MeshTet2, MeshHex1, MeshHex2],
)
def test_element_types_round_trip(tmp_path, cls):
    base = cls().refined(1)
    base = type(base)(base.doflocs.copy() * np.arange(1, base.dim() + 1)[:, None] ** 0.5, base.t)
    path = tmp_path / "mesh.vtu"
    meshio.write(path, to_meshio(base, encode_cell_data=False))
    mesh = read_mesh(path)
    assert type(mesh) is type(base)
    assert mesh.nelements == base.nelements and mesh.nvertices == base.nvertices
    assert np.array_equal(mesh.p, base.p)
    assert np.array_equal(np.sort(mesh.t, axis=0), np.sort(base.t, axis=0))
    assert np.allclose(element_measures(mesh), element_measures(base))
    if cls is not MeshTri1:  # MeshTri1 sorts its element nodes, whatever the file says
        # one orientation throughout (negative for hexahedra: scikit-fem's hex node order is
        # left-handed where VTK's is right-handed)
        X, _ = get_quadrature(mesh.elem.refdom, 2)
        detdf = mesh._mapping().detDF(X)
        assert np.all(detdf < 0) if cls in (MeshHex1, MeshHex2) else np.all(detdf > 0)
    # the reference meshes fill the unit square/cube, stretched by sqrt(1), sqrt(2), sqrt(3)
    assert element_measures(mesh).sum() == pytest.approx(
        np.prod(np.sqrt(np.arange(1, mesh.dim() + 1)))
    )


def test_line3_becomes_line():
    x = np.linspace(0.0, 2.0, 9)
    m = meshio.Mesh(x[:, None], [("line3", np.array([[0, 2, 1], [2, 4, 3], [4, 6, 5], [6, 8, 7]]))])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dropping the mid nodes is no repair
        mesh = from_meshio(m)
    assert isinstance(mesh, MeshLine1)
    assert mesh.nelements == 4 and mesh.nvertices == 5
    assert np.allclose(np.sort(mesh.p[0]), [0.0, 0.5, 1.0, 1.5, 2.0])


def test_second_order_gmsh_disk_is_curved(tmp_path):
    gmsh = pytest.importorskip("gmsh")
    path = tmp_path / "disk.msh"
    gmsh.initialize()
    try:
        gmsh.option.setNumber("General.Terminal", 0)
        gmsh.model.occ.addDisk(0, 0, 0, 1, 1)
        gmsh.model.occ.synchronize()
        gmsh.model.addPhysicalGroup(1, [1], name="circle")
        gmsh.model.addPhysicalGroup(2, [1], name="disk")
        gmsh.option.setNumber("Mesh.MeshSizeMax", 0.3)
        gmsh.model.mesh.generate(2)
        gmsh.model.mesh.setOrder(2)
        gmsh.write(str(path))
    finally:
        gmsh.finalize()
    mesh = read_mesh(path)
    assert isinstance(mesh, MeshTri2)
    assert mesh.p.shape[1] > mesh.nvertices  # mid nodes kept
    n = len(mesh.boundaries["circle"])
    assert n == len(mesh.boundary_facets())
    # curved P2 elements: the area is far closer to pi than the inscribed polygon's
    polygon = 0.5 * n * math.sin(2 * math.pi / n)
    assert abs(element_measures(mesh).sum() - math.pi) < 0.01 * (math.pi - polygon)


# --- writing --------------------------------------------------------------------------------
def test_write_vtu_round_trip(tmp_path, plate):
    rng = np.random.default_rng(0)
    u = rng.standard_normal(plate.nvertices)
    grad = rng.standard_normal((plate.nvertices, 2))
    k = rng.standard_normal(plate.nelements)
    before = {name: a.copy() for name, a in {"u": u, "grad": grad, "k": k}.items()}
    fields = {"u": u, "grad": grad, "k": k}
    path = write_fields(tmp_path / "out" / "deep" / "fields.vtu", plate, fields)
    assert path.exists()
    assert set(fields) == {"u", "grad", "k"} and all(
        np.array_equal(fields[n], before[n]) for n in before
    )
    back = meshio.read(path)
    assert np.allclose(back.points[:, :2], plate.p.T)
    assert np.array_equal(back.cells_dict["triangle"], plate.t.T)
    assert np.array_equal(back.point_data["u"], u)
    assert np.array_equal(back.point_data["grad"], grad)
    assert np.array_equal(back.cell_data["k"][0], k)


def test_write_xdmf_time_series(tmp_path, monkeypatch, plate):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    times = np.array([0.0, 0.5, 1.0])
    u = np.stack([np.sin(t + plate.p[0]) for t in times])
    v = np.stack([np.full((plate.nvertices, 2), t) for t in times])
    k = np.arange(3 * plate.nelements, dtype=float).reshape(3, -1)
    u_before = u.copy()
    path = write_fields(
        tmp_path / "series" / "run.xdmf", plate, {"u": u, "v": v, "k": k}, times=times
    )
    assert (tmp_path / "series" / "run.h5").exists()
    assert list(cwd.iterdir()) == []  # meshio would have put the .h5 in the working directory
    assert np.array_equal(u, u_before)
    with meshio.xdmf.TimeSeriesReader(path) as reader:
        points, _ = reader.read_points_cells()
        assert np.allclose(points[:, :2], plate.p.T)
        assert reader.num_steps == 3
        for i in range(3):
            t, point_data, cell_data = reader.read_data(i)
            assert t == times[i]
            assert np.array_equal(point_data["u"], u[i])
            assert np.array_equal(point_data["v"], v[i])
            assert np.array_equal(cell_data["k"][0], k[i])


@pytest.mark.parametrize(("name", "relative"), [("run.xdmf", False), ("run.v2.xmf", True)])
def test_xdmf_series_never_changes_the_working_directory(
    tmp_path, monkeypatch, plate, name, relative
):
    # meshio's own writer needs the working directory to be the .xdmf file's folder; femoe's
    # must neither change it nor depend on it, and the .xdmf must name the .h5 relative to itself
    unrelated = tmp_path / "unrelated"
    unrelated.mkdir()
    monkeypatch.chdir(unrelated)
    chdirs = []
    monkeypatch.setattr(os, "chdir", chdirs.append)
    target = (Path("..") / "series" / name) if relative else (tmp_path / "series" / name)
    times = np.array([0.0, 0.25])
    u = np.stack([plate.p[0] + t for t in times])
    k = np.stack([np.full(plate.nelements, t) for t in times])
    path = write_fields(target, plate, {"u": u, "k": k}, times=times)
    assert chdirs == [] and Path.cwd() == unrelated  # (a) the working directory is untouched
    assert list(unrelated.iterdir()) == []  # (b) nothing lands in it
    stem = name.rsplit(".", 1)[0]
    assert sorted(p.name for p in (tmp_path / "series").iterdir()) == sorted([name, f"{stem}.h5"])
    # every HDF5 reference is the bare file name, i.e. relative to the .xdmf file (ParaView)
    items = ET.parse(path).iter("DataItem")
    refs = [item.text.strip() for item in items if item.get("Format") == "HDF"]
    assert refs and {r.split(":/")[0] for r in refs} == {f"{stem}.h5"}
    monkeypatch.undo()  # os.chdir back, and the original working directory
    elsewhere = tmp_path / "reader"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # (c) the series reads back from a third directory
    with meshio.xdmf.TimeSeriesReader((tmp_path / "series" / name).resolve()) as reader:
        points, _ = reader.read_points_cells()
        assert np.allclose(points[:, :2], plate.p.T)
        for i in range(len(times)):
            t, point_data, cell_data = reader.read_data(i)
            assert t == times[i]
            assert np.array_equal(point_data["u"], u[i])
            assert np.array_equal(cell_data["k"][0], k[i])


def test_only_the_format_adapter_uses_meshio_internals():
    root = Path(__file__).resolve().parents[1] / "femoe"
    users = [p for p in root.rglob("*.py") if re.search(r"meshio\._", p.read_text())]
    assert [str(p.relative_to(root)) for p in users] == ["mesh/_formats.py"]


def test_write_p2_writes_vertex_values(tmp_path):
    mesh = MeshTri2().refined(2)
    values = mesh.p[0] + 2 * mesh.p[1]  # on all nodes, vertices first
    path = write_fields(tmp_path / "p2.vtu", mesh, {"f": values, "g": values[: mesh.nvertices]})
    back = meshio.read(path)
    assert back.points.shape[0] == mesh.nvertices
    assert np.allclose(back.point_data["f"], back.points[:, 0] + 2 * back.points[:, 1])
    assert np.array_equal(back.point_data["f"], back.point_data["g"])


def test_write_hex_orders_nodes_for_vtk(tmp_path):
    mesh = MeshHex1().refined(1)
    back = meshio.read(write_fields(tmp_path / "hex.vtu", mesh, {"k": np.ones(mesh.nelements)}))
    assert np.allclose(element_measures(from_meshio(back)), element_measures(mesh))


def test_write_fields_rejects_bad_input(tmp_path, plate):
    with pytest.raises(ShapeError, match="'u'.*2477 \\(one per vertex\\)"):
        write_fields(tmp_path / "a.vtu", plate, {"u": np.zeros(5)})
    with pytest.raises(ShapeError, match="len\\(times\\) = 2"):
        write_fields(
            tmp_path / "a.xdmf", plate, {"u": np.zeros((3, plate.nvertices))}, times=[0, 1]
        )
    with pytest.raises(MeshFormatError, match="suffix"):
        write_fields(tmp_path / "a.foo", plate, {"u": np.zeros(plate.nvertices)})
    with pytest.raises(MeshFormatError, match=".xdmf"):
        write_fields(tmp_path / "a.vtu", plate, {"u": np.zeros((1, plate.nvertices))}, times=[0])


# --- quality and info -----------------------------------------------------------------------
def test_quality_reference_shapes():
    s3 = math.sqrt(3.0)
    equilateral = MeshTri1(
        np.array([[0.0, 1.0, 0.5], [0.0, 0.0, s3 / 2]]), np.array([[0], [1], [2]])
    )
    assert aspect_ratios(equilateral) == pytest.approx([1.0])
    assert element_measures(equilateral) == pytest.approx([s3 / 4])
    # right isosceles triangle: R = sqrt(2)/2, r = (2 - sqrt(2))/2, R / (2 r) = 1.2071...
    right = MeshTri1(np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]), np.array([[0], [1], [2]]))
    assert aspect_ratios(right) == pytest.approx([(math.sqrt(2) / 2) / (2 - math.sqrt(2))])
    regular = MeshTet1(
        np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float).T,
        np.array([[0, 1, 2, 3]]).T,
    )
    assert aspect_ratios(regular) == pytest.approx([1.0])
    assert aspect_ratios(MeshHex1()) == pytest.approx([1.0])
    stretched = MeshQuad1(
        np.array([[0.0, 4.0, 4.0, 0.0], [0.0, 0.0, 1.0, 1.0]]), np.array([[0, 1, 2, 3]]).T
    )
    # corner Jacobian diag(4, 1): |J|_F |J^-1|_F / 2 = sqrt(17) sqrt(17/16) / 2
    assert aspect_ratios(stretched) == pytest.approx([17 / 8])
    assert element_measures(stretched) == pytest.approx([4.0])


def test_mesh_info(plate):
    info = mesh_info(plate)
    json.dumps(info)
    assert info["mesh_type"] == "MeshTri1" and info["cell_type"] == "triangle" and info["dim"] == 2
    assert info["n_elements"] == plate.nelements and info["n_vertices"] == plate.nvertices
    assert info["bbox"] == {"min": [0.0, 0.0], "max": [2.0, 1.0]}
    assert info["boundaries"] == {k: len(v) for k, v in sorted(plate.boundaries.items())}
    assert info["subdomains"] == {"domain": plate.nelements}
    q = info["quality"]
    assert q["total_measure"] == pytest.approx(element_measures(plate).sum())
    assert 0 < q["min_measure"] <= q["max_measure"]
    assert 1.0 <= q["mean_aspect_ratio"] <= q["max_aspect_ratio"] < 3.0
    assert mesh_info(MeshTet2())["cell_type"] == "tetra10"


# --- issue 10: second-order tags, empty groups ----------------------------------------------
def test_dfg_second_order_mesh_tags_lie_on_their_boundaries():
    # the facets of a second-order file used to be matched against scikit-fem's renumbered
    # nodes: inlet and outlet came back empty and "walls" held wrong facets
    mesh = read_mesh(MESHES / "dfg_cylinder.msh")
    assert isinstance(mesh, MeshTri2)
    where = {"inlet": lambda x, y: np.isclose(x, 0.0), "outlet": lambda x, y: np.isclose(x, 2.2),
             "walls": lambda x, y: np.isclose(y, 0.0) | np.isclose(y, 0.41),
             "cylinder": lambda x, y: np.isclose(np.hypot(x - 0.2, y - 0.2), 0.05)}
    for name, on in where.items():
        facets = mesh.boundaries[name]
        x = mesh.p[:, mesh.facets[:, facets]]
        assert len(facets) > 0 and on(x[0], x[1]).all(), name
    assert sum(facet_measures(mesh, mesh.boundaries[n]).sum() for n in ("inlet", "outlet")) == pytest.approx(0.82)
    assert facet_measures(mesh, mesh.boundaries["walls"]).sum() == pytest.approx(4.4)
    # the mid nodes on the cylinder lie on the circle (curved geometry)
    from skfem import Basis, ElementTriP2
    dofs = Basis(mesh, ElementTriP2()).get_dofs(mesh.boundaries["cylinder"]).all()
    x = Basis(mesh, ElementTriP2()).doflocs[:, dofs]
    np.testing.assert_allclose(np.hypot(x[0] - 0.2, x[1] - 0.2), 0.05, atol=1e-9)


def test_empty_named_groups_warn_and_are_listed_with_count_zero(tmp_path):
    from femoe.errors import EmptyGroupWarning, ProblemError

    src = meshio.read(MESHES / "plate_with_holes.msh")
    field_data = dict(src.field_data)
    field_data["ghost_wall"] = np.array([41, 1])
    field_data["ghost_zone"] = np.array([42, 2])
    path = tmp_path / "empty_groups.msh"
    meshio.write(path, meshio.Mesh(src.points, src.cells, cell_data=src.cell_data, field_data=field_data),
                 file_format="gmsh22", binary=False)
    with pytest.warns(EmptyGroupWarning, match=r"boundary group\(s\) \['ghost_wall'\].*subdomain group\(s\) "
                                               r"\['ghost_zone'\]"):
        mesh = read_mesh(path)
    info = mesh_info(mesh)
    assert info["boundaries"]["ghost_wall"] == 0 and info["subdomains"]["ghost_zone"] == 0
    assert info["boundaries"]["outer"] > 0
    import skfem as fe

    from femoe import Problem
    with pytest.raises(ProblemError, match="'ghost_wall' holds no facets"):
        Problem(fe.Basis(mesh, fe.ElementTriP1()), lambda u, v, w: u * v, dirichlet={"ghost_wall": 0.0})
