"""The README's code runs as written (from the repository root, where its paths point)."""

import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks, "README.md has no python block"
    (tmp_path / "meshes").symlink_to(ROOT / "meshes")
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)
    assert (tmp_path / "out" / "darcy.vtu").is_file()
    u_ref = ns["u_ref"]
    assert np.isfinite(u_ref).all() and np.abs(u_ref).max() > 0
    assert np.allclose(u_ref[ns["problem"].dirichlet_dofs], 0.0)
