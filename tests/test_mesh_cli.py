"""``femoe mesh info``: summaries, JSON, and every broken file as a clean error."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import femoe.cli
from femoe.cli import main
from femoe.mesh import mesh_info, read_mesh

try:  # the broken-file cases are shared with test_mesh_errors.py, in this folder
    from test_mesh_errors import BROKEN, SQUARE_POINTS, _write
except ImportError:  # tests/ imported as a package
    from tests.test_mesh_errors import BROKEN, SQUARE_POINTS, _write

MESHES = Path(__file__).resolve().parents[1] / "meshes"


@pytest.fixture(autouse=True)
def _only_available_commands(monkeypatch):
    # other subcommands are written in parallel; test ``mesh`` even when one is missing
    present = [c for c in femoe.cli._COMMANDS if importlib.util.find_spec(f"femoe.cli.{c}")]
    monkeypatch.setattr(femoe.cli, "_COMMANDS", present)


def test_info_summary(capsys):
    assert main(["mesh", "info", str(MESHES / "plate_with_holes.msh")]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "MeshTri1: 4670 triangle elements, dim 2" in out
    assert "2477 vertices" in out
    assert "hole_1 (42 edges), hole_2 (42 edges), outer (202 edges)" in out
    assert "domain (4670 elements)" in out
    assert "(0, 0) .. (2, 1)" in out


@pytest.mark.parametrize("name", ["interval", "plate_with_holes", "periodic_square", "box_tet"])
def test_info_json_matches_mesh_info(capsys, name):
    path = MESHES / f"{name}.msh"
    assert main(["mesh", "info", str(path), "--json"]) == 0
    out, _ = capsys.readouterr()
    data = json.loads(out)
    assert data.pop("file") == str(path)
    assert data == json.loads(json.dumps(mesh_info(read_mesh(path))))


def test_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["mesh", "info", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: femoe mesh info" in out and "--json" in out and "FILE" in out
    with pytest.raises(SystemExit) as info:
        main(["mesh", "--help"])
    assert info.value.code == 0 and "info" in capsys.readouterr().out


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_exit_cleanly(tmp_path, capsys, case):
    make, _, pattern = BROKEN[case]
    path = make(tmp_path)
    assert main(["mesh", "info", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("femoe: error: ") and str(path) in err
    assert "Traceback" not in err
    assert re.search(pattern, err, flags=re.S), err


def test_repairs_are_reported_as_warnings(tmp_path, capsys):
    quads = [[0, 1, 4, 3], [1, 4, 5, 2]]  # the second one clockwise
    path = _write(tmp_path / "quads.vtu", SQUARE_POINTS, [("quad", np.array(quads))])
    assert main(["mesh", "info", str(path), "--json"]) == 0
    out, err = capsys.readouterr()
    assert "femoe: warning: " in err and "1 of 2 quad elements were inverted" in err
    assert json.loads(out)["quality"]["total_measure"] == pytest.approx(2.0)


def test_format_option_reads_a_file_without_suffix(tmp_path, capsys):
    path = tmp_path / "plate"
    path.write_bytes((MESHES / "plate_with_holes.msh").read_bytes())
    assert main(["mesh", "info", str(path), "--format", "gmsh", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n_vertices"] == 2477


def test_info_lists_an_empty_named_group_with_count_zero(tmp_path, capsys):
    import meshio

    src = meshio.read(MESHES / "plate_with_holes.msh")
    field_data = {**src.field_data, "ghost_wall": np.array([41, 1])}
    path = tmp_path / "ghost.msh"
    meshio.write(path, meshio.Mesh(src.points, src.cells, cell_data=src.cell_data, field_data=field_data),
                 file_format="gmsh22", binary=False)
    assert main(["mesh", "info", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "ghost_wall (0 edges)" in out
    assert "'ghost_wall'" in err and "hold no elements" in err
