"""docs/api.md's signatures are the code's (docs/api_signatures.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("api_signatures", ROOT / "docs" / "api_signatures.py")
api = importlib.util.module_from_spec(spec)
spec.loader.exec_module(api)


def test_every_signature_in_api_md_matches_the_code():
    text = api.API.read_text()
    assert sum(1 for _ in api.entries(text)) > 100  # the parser sees the headings and the rows
    bad = api.check(text)
    assert not bad, "docs/api.md drifted from the code (python docs/api_signatures.py --fix):\n" + "\n".join(
        f"line {line}: {name}\n  documented: {doc}\n  code:       {code}" for line, name, doc, code in bad)


def test_a_drifted_signature_is_reported_and_fixed():
    text = api.API.read_text()
    heading = "### `ExpertsConfig("
    assert heading in text
    line = next(ln for ln in text.splitlines() if ln.startswith(heading))
    stale = text.replace(line, "### `ExpertsConfig(k: int = 4, partition: str = 'auto', seed: int = 1) -> None`")
    assert [b[1] for b in api.check(stale)] == ["ExpertsConfig"]  # a changed default and missing keys
    row = next(ln for ln in text.splitlines() if ln.startswith("| `run(cfg: Config"))
    stale = stale.replace(row, row.replace(", overwrite: bool = False", ""))
    assert [b[1] for b in api.check(stale)] == ["ExpertsConfig", "run"]
    fixed = api.fix(stale)
    assert api.check(fixed) == []
    gone = text.replace("### `ExpertsConfig(", "### `ExpertConfig(")
    assert [b[1] for b in api.check(gone)] == ["ExpertConfig"]  # a name the code does not have


def test_every_repository_path_cited_in_code_and_docs_exists():
    """A comment, docstring or doc that names a file of the repository (a benchmark script, a
    doc page, a config under problems/configs, a committed JSON...) names one that exists."""
    import re
    import subprocess

    files = subprocess.run(["git", "ls-files", "*.py", "*.md", "*.toml", "*.sh"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    pattern = re.compile(r"(?<![\w/.])((?:benchmarks|docs|tests|problems|meshes|examples|femoe|\.ci)/"
                         r"[\w/.-]*[\w-]\.(?:py|md|toml|msh|json|sh))")
    cited, missing = 0, []
    for f in files:
        for m in pattern.finditer((ROOT / f).read_text(errors="ignore")):
            cited += 1
            if not (ROOT / m.group(1)).exists():
                missing.append(f"{f}: {m.group(1)}")
    assert cited > 50  # the pattern sees the citations
    assert not missing, "files cited but not in the repository:\n" + "\n".join(sorted(set(missing)))
