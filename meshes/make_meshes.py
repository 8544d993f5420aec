"""Regenerate the meshes bundled with femoe (``python meshes/make_meshes.py``).

Every file is written as Gmsh 4.1 ASCII next to this script, with named physical groups:

``interval.msh``
    1D interval [0, 1], 64 line cells; points "left" (x=0) and "right" (x=1), line "domain".
``plate_with_holes.msh``
    Rectangle [0, 2] x [0, 1] minus two disks (centres (0.5, 0.5) and (1.5, 0.5), radius 0.2),
    unstructured triangles; curves "outer", "hole_1", "hole_2", surface "domain".
``periodic_square.msh``
    Unit square, triangles, with Gmsh periodic constraints left<->right and bottom<->top so
    that opposite sides carry nodes at matching positions; curves "left", "right", "bottom",
    "top", surface "domain".
``box_tet.msh``
    Unit cube, tetrahedra; faces "xmin", "xmax", "ymin", "ymax", "zmin", "zmax", volume
    "domain".
``dfg_cylinder.msh``
    The Schaefer-Turek DFG channel [0, 2.2] x [0, 0.41] minus the disk of radius 0.05 centred
    at (0.2, 0.2), **second-order** triangles (``triangle6``: the mid nodes on the cylinder lie
    on the circle), graded from ``h_cyl`` on the cylinder to ``h_far``; curves "inlet" (x=0),
    "outlet" (x=2.2), "walls" (y=0 and y=0.41), "cylinder", surface "domain".

The script needs the ``gmsh`` Python package (``pip install gmsh``). Meshes are generated
with a fixed algorithm and a single thread, so that reruns give the same files.
"""

from __future__ import annotations

import math
from pathlib import Path

import gmsh

HERE = Path(__file__).resolve().parent

# hole geometry of plate_with_holes.msh; tests compare boundary lengths against these
HOLES = [((0.5, 0.5), 0.2), ((1.5, 0.5), 0.2)]


def _start(name: str) -> None:
    gmsh.initialize()
    gmsh.option.setNumber("General.Terminal", 0)
    gmsh.option.setNumber("General.NumThreads", 1)
    gmsh.option.setNumber("Mesh.MshFileVersion", 4.1)
    gmsh.option.setNumber("Mesh.Binary", 0)
    gmsh.model.add(name)


def _finish(filename: str) -> Path:
    path = HERE / filename
    gmsh.write(str(path))
    gmsh.finalize()
    return path


def make_interval(n: int = 64) -> Path:
    _start("interval")
    geo = gmsh.model.geo
    left = geo.addPoint(0.0, 0.0, 0.0)
    right = geo.addPoint(1.0, 0.0, 0.0)
    line = geo.addLine(left, right)
    geo.mesh.setTransfiniteCurve(line, n + 1)
    geo.synchronize()
    gmsh.model.addPhysicalGroup(0, [left], name="left")
    gmsh.model.addPhysicalGroup(0, [right], name="right")
    gmsh.model.addPhysicalGroup(1, [line], name="domain")
    gmsh.model.mesh.generate(1)
    return _finish("interval.msh")


def make_plate_with_holes(h: float = 0.03) -> Path:
    _start("plate_with_holes")
    occ = gmsh.model.occ
    plate = occ.addRectangle(0.0, 0.0, 0.0, 2.0, 1.0)
    disks = [occ.addDisk(cx, cy, 0.0, r, r) for (cx, cy), r in HOLES]
    occ.cut([(2, plate)], [(2, d) for d in disks])
    occ.synchronize()
    surfaces = gmsh.model.getEntities(2)
    curves = gmsh.model.getBoundary(surfaces, oriented=False)
    outer, holes = [], {i: [] for i in range(len(HOLES))}
    for _, tag in curves:
        x0, y0, _, x1, y1, _ = gmsh.model.getBoundingBox(1, tag)
        for i, ((cx, cy), r) in enumerate(HOLES):
            if abs(x0 - (cx - r)) < 1e-6 and abs(x1 - (cx + r)) < 1e-6 and y0 > 0.0 and y1 < 1.0:
                holes[i].append(tag)
                break
        else:
            outer.append(tag)
    gmsh.model.addPhysicalGroup(1, outer, name="outer")
    for i in range(len(HOLES)):
        gmsh.model.addPhysicalGroup(1, holes[i], name=f"hole_{i + 1}")
    gmsh.model.addPhysicalGroup(2, [tag for _, tag in surfaces], name="domain")
    gmsh.option.setNumber("Mesh.MeshSizeMax", h)
    gmsh.option.setNumber("Mesh.MeshSizeMin", h)
    gmsh.option.setNumber("Mesh.Algorithm", 6)
    gmsh.model.mesh.generate(2)
    return _finish("plate_with_holes.msh")


def make_periodic_square(n: int = 56) -> Path:
    _start("periodic_square")
    geo = gmsh.model.geo
    h = 1.0 / n
    p = [geo.addPoint(x, y, 0.0, h) for x, y in [(0, 0), (1, 0), (1, 1), (0, 1)]]
    bottom = geo.addLine(p[0], p[1])
    right = geo.addLine(p[1], p[2])
    top = geo.addLine(p[3], p[2])
    left = geo.addLine(p[0], p[3])
    loop = geo.addCurveLoop([bottom, right, -top, -left])
    surface = geo.addPlaneSurface([loop])
    geo.synchronize()
    # affine maps sending the master curve onto the slave curve (4x4, row-major)
    shift_x = [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    shift_y = [1, 0, 0, 0, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 1]
    gmsh.model.mesh.setPeriodic(1, [right], [left], shift_x)
    gmsh.model.mesh.setPeriodic(1, [top], [bottom], shift_y)
    for name, tag in [("left", left), ("right", right), ("bottom", bottom), ("top", top)]:
        gmsh.model.addPhysicalGroup(1, [tag], name=name)
    gmsh.model.addPhysicalGroup(2, [surface], name="domain")
    gmsh.option.setNumber("Mesh.Algorithm", 6)
    gmsh.model.mesh.generate(2)
    return _finish("periodic_square.msh")


def make_box_tet(h: float = 0.08) -> Path:
    _start("box_tet")
    occ = gmsh.model.occ
    box = occ.addBox(0.0, 0.0, 0.0, 1.0, 1.0, 1.0)
    occ.synchronize()
    faces = gmsh.model.getBoundary([(3, box)], oriented=False)
    names = {}
    for _, tag in faces:
        cx, cy, cz = gmsh.model.occ.getCenterOfMass(2, tag)
        for axis, c in zip("xyz", (cx, cy, cz)):
            if math.isclose(c, 0.0, abs_tol=1e-9):
                names[f"{axis}min"] = tag
            elif math.isclose(c, 1.0, abs_tol=1e-9):
                names[f"{axis}max"] = tag
    for name in ["xmin", "xmax", "ymin", "ymax", "zmin", "zmax"]:
        gmsh.model.addPhysicalGroup(2, [names[name]], name=name)
    gmsh.model.addPhysicalGroup(3, [box], name="domain")
    gmsh.option.setNumber("Mesh.MeshSizeMax", h)
    gmsh.option.setNumber("Mesh.MeshSizeMin", h)
    gmsh.model.mesh.generate(3)
    return _finish("box_tet.msh")


#: DFG 2D-1 geometry: channel length and height, cylinder centre and radius
DFG = {"length": 2.2, "height": 0.41, "centre": (0.2, 0.2), "radius": 0.05}


def make_dfg_cylinder(h_cyl: float = 0.01, h_far: float = 0.05, filename: str = "dfg_cylinder.msh",
                      order: int = 2) -> Path:
    _start("dfg_cylinder")
    occ = gmsh.model.occ
    L, H, (cx, cy), r = DFG["length"], DFG["height"], DFG["centre"], DFG["radius"]
    channel = occ.addRectangle(0.0, 0.0, 0.0, L, H)
    disk = occ.addDisk(cx, cy, 0.0, r, r)
    occ.cut([(2, channel)], [(2, disk)])
    occ.synchronize()
    surfaces = gmsh.model.getEntities(2)
    groups: dict[str, list[int]] = {"inlet": [], "outlet": [], "walls": [], "cylinder": []}
    for _, tag in gmsh.model.getBoundary(surfaces, oriented=False):
        x0, y0, _, x1, y1, _ = gmsh.model.getBoundingBox(1, tag)
        if x1 < 1e-6:
            groups["inlet"].append(tag)
        elif x0 > L - 1e-6:
            groups["outlet"].append(tag)
        elif y1 < 1e-6 or y0 > H - 1e-6:
            groups["walls"].append(tag)
        else:
            groups["cylinder"].append(tag)
    for name, tags in groups.items():
        gmsh.model.addPhysicalGroup(1, tags, name=name)
    gmsh.model.addPhysicalGroup(2, [tag for _, tag in surfaces], name="domain")
    # grade the size from the cylinder outwards, finer in the near wake
    field = gmsh.model.mesh.field
    dist = field.add("Distance")
    field.setNumbers(dist, "CurvesList", groups["cylinder"])
    field.setNumber(dist, "Sampling", 200)
    thr = field.add("Threshold")
    field.setNumber(thr, "InField", dist)
    field.setNumber(thr, "SizeMin", h_cyl)
    field.setNumber(thr, "SizeMax", h_far)
    field.setNumber(thr, "DistMin", 0.01)
    field.setNumber(thr, "DistMax", 0.5)
    field.setAsBackgroundMesh(thr)
    gmsh.option.setNumber("Mesh.MeshSizeExtendFromBoundary", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromPoints", 0)
    gmsh.option.setNumber("Mesh.MeshSizeFromCurvature", 0)
    gmsh.option.setNumber("Mesh.Algorithm", 6)
    gmsh.model.mesh.generate(2)
    if order > 1:
        gmsh.model.mesh.setOrder(order)
    return _finish(filename)


def main() -> None:
    for make in (make_interval, make_plate_with_holes, make_periodic_square, make_box_tet, make_dfg_cylinder):
        path = make()
        print(f"wrote {path.name} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
