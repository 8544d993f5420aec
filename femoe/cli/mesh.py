"""``femoe mesh``: look at mesh files.

``femoe mesh info FILE [--json]`` reads FILE as :func:`femoe.mesh.read_mesh` does (same
validation, same errors) and prints :func:`femoe.mesh.mesh_info` as a readable summary or as
JSON. Repairs made while reading (unused nodes dropped, inverted elements reordered) are
reported on stderr as ``femoe: warning: ...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from typing import Any


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``mesh`` command and its subcommands to the ``femoe`` parser."""
    parser = subparsers.add_parser(
        "mesh",
        help="inspect mesh files",
        description="Inspect mesh files (any format meshio reads: .msh, .vtu, .xdmf, ...).",
    )
    sub = parser.add_subparsers(dest="mesh_command", metavar="SUBCOMMAND")
    sub.required = True
    info = sub.add_parser(
        "info",
        help="summarise a mesh: cells, nodes, extent, tags, quality",
        description=(
            "Read a mesh file with femoe's validation and print its element type and counts, "
            "bounding box, boundary and subdomain tags with their sizes, and element quality "
            "(measures; aspect ratio, 1 = ideal)."
        ),
    )
    info.add_argument("file", metavar="FILE", help="mesh file (.msh, .vtu, .xdmf, ...)")
    info.add_argument("--json", action="store_true", help="print the summary as JSON")
    info.add_argument(
        "--format",
        dest="file_format",
        default=None,
        metavar="NAME",
        help="meshio format name, when the suffix does not tell (e.g. gmsh, vtu, xdmf)",
    )
    info.set_defaults(func=_info)


def _fmt_list(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def _fmt_tags(tags: dict[str, int], unit: str) -> str:
    if not tags:
        return "(none)"
    return ", ".join(f"{name} ({size} {unit})" for name, size in tags.items())


def format_info(info: dict[str, Any], file: str) -> str:
    """The readable summary ``femoe mesh info`` prints for a :func:`mesh_info` dict."""
    q = info["quality"]
    facet_unit = {1: "points", 2: "edges", 3: "faces"}.get(info["dim"], "facets")
    lines = [
        f"file        {file}",
        f"mesh        {info['mesh_type']}: {info['n_elements']} {info['cell_type']} elements, "
        f"dim {info['dim']}",
        f"nodes       {info['n_vertices']} vertices"
        + (f", {info['n_nodes']} nodes" if info["n_nodes"] != info["n_vertices"] else ""),
        f"facets      {info['n_facets']} ({info['n_boundary_facets']} on the boundary)",
        f"bbox        {_fmt_list(info['bbox']['min'])} .. {_fmt_list(info['bbox']['max'])}",
        f"boundaries  {_fmt_tags(info['boundaries'], facet_unit)}",
        f"subdomains  {_fmt_tags(info['subdomains'], 'elements')}",
        f"measure     min {q['min_measure']:.4g}, max {q['max_measure']:.4g}, "
        f"total {q['total_measure']:.6g}",
        f"aspect      worst {q['max_aspect_ratio']:.4g}, mean {q['mean_aspect_ratio']:.4g} "
        "(1 = ideal)",
    ]
    return "\n".join(lines)


def _info(args: argparse.Namespace) -> int:
    from femoe.mesh import mesh_info, read_mesh

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mesh = read_mesh(args.file, file_format=args.file_format)
    for w in caught:
        print(f"femoe: warning: {w.message}", file=sys.stderr)
    info = mesh_info(mesh)
    if args.json:
        print(json.dumps({"file": str(args.file), **info}, indent=2))
    else:
        print(format_info(info, str(args.file)))
    return 0
