"""femoe solve: the README's first command."""

import meshio
import numpy as np
import pytest

from femoe.cli import main


def test_default_solve_writes_vtu_png_and_a_summary(tmp_path, capsys):
    rc = main(["solve", "--out", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "darcy_2d" in out and "DOFs        2477" in out and "Newton      1 iterations" in out
    m = meshio.read(tmp_path / "solution.vtu")
    assert m.points.shape[0] == 2477
    u, kappa = m.point_data["u"], m.point_data["kappa"]
    assert u.max() > 0 and np.all(kappa > 0)
    png = (tmp_path / "solution.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_transient_solve_writes_an_xdmf_series(tmp_path, capsys):
    rc = main(["solve", "diffusion_sorption_1d", "--out", str(tmp_path), "--seed", "3",
               "--param", "n_cells=64", "--param", "T=50", "--param", "n_saved=11"])
    assert rc == 0
    assert "x 11 saved levels" in capsys.readouterr().out
    with meshio.xdmf.TimeSeriesReader(tmp_path / "solution.xdmf") as reader:
        reader.read_points_cells()
        assert reader.num_steps == 11
        t, point_data, _ = reader.read_data(10)
        assert t == pytest.approx(50.0)
        assert point_data["u"].max() == pytest.approx(1.0)
    assert (tmp_path / "solution.png").stat().st_size > 10_000


def test_solve_errors_are_clean(tmp_path, capsys):
    assert main(["solve", "heat", "--out", str(tmp_path / "a")]) != 0
    assert "Pick one of" in capsys.readouterr().err
    assert main(["solve", "darcy_2d", "--param", "f=nan", "--out", str(tmp_path / "b")]) != 0
    assert "physical range" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["solve", "--help"])
    assert exc.value.code == 0
    assert "darcy_2d" in capsys.readouterr().out
