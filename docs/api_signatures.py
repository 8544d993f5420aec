"""Keep the signatures in docs/api.md equal to the code.

docs/api.md is written by hand (its grouping and prose), but every signature in it, a class
heading ``### `Name(...)` `` or a table row ``| `name(...)` |`` (a function of the section's
module, or a member of the class above it), is the code's. This script checks them and, with
``--fix``, rewrites the ones that drifted:

    python docs/api_signatures.py          # exit status 1 and a list when one drifted
    python docs/api_signatures.py --fix    # rewrite them from inspect.signature

``tests/test_docs_api.py`` runs the check.
"""

from __future__ import annotations

import argparse
import enum
import importlib
import inspect
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"

_SECTION = re.compile(r"^## `([\w.]+)`")
_HEADING = re.compile(r"^### `(\w+)\((.*)\)(?: -> [^`]*)?`")
_ROW = re.compile(r"^\| `(\w+)\((.*?)\)(?: -> [^`|]*)?` ")


def _annotation(a) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def format_signature(obj, name: str) -> str | None:
    """``name(params) -> ret`` in the style of docs/api.md (annotations as written in the code,
    defaults as ``repr``, ``self`` left out), or ``None`` where Python cannot tell."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    parts, star_done = [], False
    for p in sig.parameters.values():
        if p.name in ("self", "cls"):
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        text = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "") + p.name
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            d = p.default
            d = d.value if isinstance(d, enum.Enum) else d
            d = "<factory>" if "factory" in repr(d) else d.__name__ if isinstance(d, type) else repr(d)
            text += (" = " if p.annotation is not p.empty else "=") + d
        parts.append(text)
    out = f"{name}({', '.join(parts)})"
    if sig.return_annotation is not sig.empty:
        out += f" -> {_annotation(sig.return_annotation)}"
    return out


def entries(text: str):
    """Every signature in the text: ``(line number, kind, object, documented name)``; kind is
    "heading" or "row"."""
    module = cls = None
    for i, line in enumerate(text.splitlines()):
        m = _SECTION.match(line)
        if m:
            try:
                module = importlib.import_module(m.group(1))
            except ImportError:
                module = None
            cls = None
            continue
        if module is None:
            continue
        m = _HEADING.match(line)
        if m:
            cls = getattr(module, m.group(1), None)
            yield i, "heading", cls, m.group(1)
            continue
        m = _ROW.match(line)
        if m:
            name = m.group(1)
            owner = cls if cls is not None and hasattr(cls, name) else module
            yield i, "row", getattr(owner, name, None), name


def _params(sig_text: str) -> list[tuple[str, str | None]]:
    """``(name, default)`` of every parameter of ``name(...)`` text (top-level commas only)."""
    inner = sig_text[sig_text.index("(") + 1:]
    depth, cur, parts = 0, "", []
    for ch in inner:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    out = []
    for p in parts:
        name = p.strip().split(":")[0].split("=")[0].strip()
        if name:
            default = _default(p.split("=", 1)[1]) if "=" in p else None
            out.append((name, default))
    return out


def _default(text: str) -> str:
    """A default as written, compared up to spacing and the module path of a dotted name
    (``nn.GELU`` and ``GELU`` are the same default)."""
    text = text.strip()
    m = re.fullmatch(r"<class '([\w.]+)'>", text)
    if m:
        text = m.group(1)
    return text.rsplit(".", 1)[-1] if re.fullmatch(r"[A-Za-z_][\w.]*", text) else text


def check(text: str) -> list[tuple[int, str, str, str]]:
    """``(line, name, documented, code)`` for every signature whose parameters (names, order,
    defaults) differ from the code's, or whose object does not exist."""
    lines = text.splitlines()
    out = []
    for i, kind, obj, name in entries(text):
        documented = re.search(r"`(\w+\(.*?\)(?: -> [^`]*)?)`", lines[i]).group(1)
        if obj is None:
            out.append((i + 1, name, documented, "(no such name in the code)"))
            continue
        code = format_signature(obj, name)
        if code is not None and _params(documented) != _params(code):
            out.append((i + 1, name, documented, code))
    return out


def fix(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for i, kind, obj, name in list(entries(text)):
        code = format_signature(obj, name) if obj is not None else None
        if code is None:
            continue
        documented = re.search(r"`(\w+\(.*?\)(?: -> [^`]*)?)`", lines[i]).group(1)
        if _params(documented) == _params(code):
            continue
        if kind == "heading" and documented.endswith("-> None") and " -> " not in code:
            code += " -> None"
        lines[i] = lines[i].replace(f"`{documented}`", f"`{code.replace('|', chr(92) + '|') if kind == 'row' else code}`", 1)
    return "".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fix", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    text = API.read_text()
    if args.fix:
        API.write_text(fix(text))
        text = API.read_text()
    bad = check(text)
    for line, name, documented, code in bad:
        print(f"docs/api.md:{line}: {name}\n  documented: {documented}\n  code:       {code}")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
