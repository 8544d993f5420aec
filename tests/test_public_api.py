"""The public API is what docs/api.md says it is, and femoe is self-contained.

- ``femoe.__all__`` equals the names docs/api.md lists as top-level (and marks **(femoe.X)**
  under the subpackage each comes from), every name resolves, and the module docstring names
  every one;
- no module of the installed package (femoe/, and problems/ and meshes/, installed as
  ``femoe.problems`` and ``femoe.meshes``) imports a top-level ``problems`` or ``meshes``;
- the bundled configs and meshes are found through the package, not the repository;
- pyproject's hand-written package list covers every package of the tree.
"""

from __future__ import annotations

import ast
import importlib
import re
import sys
import types
from pathlib import Path

import pytest

import femoe

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"
#: the folders that make up the installed package ``femoe`` (folder -> package name)
SOURCES = {ROOT / "femoe": "femoe", ROOT / "problems": "femoe.problems", ROOT / "meshes": "femoe.meshes"}
#: top-level names that the repository's folders used to be installed as
FORBIDDEN = {"problems", "meshes"}


def _documented_top_level() -> list[str]:
    lines = [ln for ln in API.read_text().splitlines() if ln.startswith("Top-level names")]
    assert len(lines) == 1, "docs/api.md must have exactly one 'Top-level names' line"
    return re.findall(r"`(\w+)`", lines[0].split(":", 1)[1])


def _marks() -> list[tuple[str, str]]:
    """``(section module, name)`` of every **(femoe.X)** mark in docs/api.md."""
    out, section = [], None
    for line in API.read_text().splitlines():
        m = re.match(r"^## `([\w.]+)`", line)
        if m:
            section = m.group(1)
        if section is not None:  # the introduction explains the mark with a placeholder
            out += [(section, name) for name in re.findall(r"\*\*\(femoe\.(\w+)\)\*\*", line)]
    return out


def test_all_matches_the_names_docs_api_md_lists():
    documented = _documented_top_level()
    assert len(documented) == len(set(documented)), "docs/api.md lists a top-level name twice"
    assert len(femoe.__all__) == len(set(femoe.__all__)), "femoe.__all__ lists a name twice"
    assert set(documented) == set(femoe.__all__), (
        f"only in docs/api.md: {sorted(set(documented) - set(femoe.__all__))}; "
        f"only in femoe.__all__: {sorted(set(femoe.__all__) - set(documented))}")
    assert 15 <= len(femoe.__all__) <= 25  # what users come for; the rest stays in subpackages


def test_every_public_name_resolves_and_is_marked_where_it_comes_from():
    modules = {n for n in femoe.__all__ if isinstance(getattr(femoe, n), types.ModuleType)}
    assert modules == {"errors", "helpers"}  # documented as sections of their own
    for name in femoe.__all__:
        assert getattr(femoe, name, None) is not None, name
    marks = _marks()
    names = [n for _, n in marks]
    assert len(names) == len(set(names)), "a name is marked (femoe.X) twice in docs/api.md"
    assert set(names) == set(femoe.__all__) - modules
    for section, name in marks:
        # the mark sits under the subpackage that defines the object femoe re-exports
        assert getattr(importlib.import_module(section), name) is getattr(femoe, name), (section, name)


def test_star_import_gives_exactly_all():
    ns: dict = {}
    exec("from femoe import *", ns)
    assert set(ns) - {"__builtins__"} == set(femoe.__all__)


def test_module_docstring_names_every_public_name():
    doc = femoe.__doc__
    missing = [n for n in femoe.__all__ if not re.search(rf"`(?:femoe\.)?{n}`", doc)]
    assert not missing, f"femoe's docstring does not list {missing}"


def test_import_femoe_does_not_import_the_bundled_problems_or_training():
    import subprocess

    code = ("import sys, femoe; print(sorted(m for m in sys.modules if m.split('.')[0] in ('problems', 'meshes') "
            "or m.startswith(('femoe.problems', 'femoe.meshes', 'femoe.train', 'femoe.cli', 'femoe.data'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --- no top-level problems / meshes ----------------------------------------------------------
def _top_level_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every absolute import in a file, and of every ``import_module``
    / ``__import__`` call with a literal (or f-string) first argument."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args:
            fn = node.func
            fname = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
            arg = node.args[0]
            if fname in ("import_module", "__import__", "find_spec"):
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    out.append((node.lineno, arg.value))
                elif isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
                    out.append((node.lineno, str(arg.values[0].value)))
    return out


def test_no_module_of_the_package_imports_a_top_level_problems_or_meshes():
    bad, seen = [], 0
    for folder in SOURCES:
        for f in sorted(folder.rglob("*.py")):
            seen += 1
            for line, mod in _top_level_imports(f):
                if mod.split(".")[0] in FORBIDDEN:
                    bad.append(f"{f.relative_to(ROOT)}:{line}: {mod}")
    assert seen > 50  # the walk sees the sources
    assert not bad, "import femoe.problems / femoe.meshes instead:\n" + "\n".join(bad)


def test_the_static_check_sees_the_forms_of_import(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import problems.darcy_2d\nfrom meshes import MESH_DIR\nimport importlib\n"
                 "importlib.import_module(f'problems.{name}')\nfrom femoe.problems import get_problem\n"
                 "from . import x\n")
    mods = [m for _, m in _top_level_imports(f)]
    assert [m for m in mods if m.split(".")[0] in FORBIDDEN] == ["problems.darcy_2d", "meshes", "problems."]


def test_the_bundled_problems_and_meshes_are_subpackages_of_femoe():
    import femoe.meshes
    import femoe.problems

    for pkg, folder in (("femoe.problems", ROOT / "problems"), ("femoe.meshes", ROOT / "meshes")):
        mod = sys.modules[pkg]
        # the repository's folder is the package (editable install), or an installed copy of it
        assert Path(mod.__file__).parent.name == folder.name
    assert femoe.problems.get_problem("poisson_mms").__class__.__module__ == "femoe.problems.poisson_mms"
    assert (femoe.meshes.MESH_DIR / "plate_with_holes.msh").is_file()
    assert femoe.meshes.MESH_DIR == Path(femoe.meshes.__file__).resolve().parent


# --- configs through the package -------------------------------------------------------------
def _bundled_configs() -> list[Path]:
    import femoe.problems

    return sorted(femoe.problems.CONFIG_DIR.glob("*.toml"))


def test_the_bundled_configs_are_found_through_the_package():
    import femoe.problems
    from femoe.cli.run import DEFAULT_CONFIG

    assert femoe.problems.CONFIG_DIR.parent == Path(femoe.problems.__file__).resolve().parent
    names = [p.name for p in _bundled_configs()]
    assert "default.toml" in names
    assert names == sorted(p.name for p in (ROOT / "problems" / "configs").glob("*.toml"))
    assert DEFAULT_CONFIG == femoe.problems.CONFIG_DIR / "default.toml" and DEFAULT_CONFIG.is_file()


@pytest.mark.parametrize("path", _bundled_configs(), ids=lambda p: p.stem)
def test_every_bundled_config_loads(path):
    from femoe.train.config import load_config

    cfg = load_config(path)
    assert cfg.problem.name and cfg.methods


# --- packaging -------------------------------------------------------------------------------
def test_pyproject_lists_every_package_of_the_tree():
    """Package-dir renames problems/ and meshes/, so pyproject lists the packages by hand: a new
    subpackage of femoe/ must be added there, or a regular install lacks it. Every folder is
    listed, data-only ones (problems/configs) too: Python can import them as namespace packages,
    and setuptools warns about one that is left out."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    st = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tree = set()
    for folder, name in SOURCES.items():
        for sub in (folder, *folder.rglob("*")):
            rel = sub.relative_to(folder).parts
            if sub.is_dir() and not any(part.startswith(("__", ".")) for part in rel):
                tree.add(".".join((name, *rel)))
    assert sorted(st["packages"]) == sorted(tree)
    assert st["package-dir"] == {"femoe.problems": "problems", "femoe.meshes": "meshes"}
