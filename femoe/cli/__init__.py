"""The ``femoe`` command line.

Each subcommand lives in its own module of this package and exposes
``register(subparsers)``; :data:`_COMMANDS` lists them in the order ``femoe --help`` shows.
User errors (:class:`femoe.errors.FemoeError`, and files that cannot be read or written) end
the program with one line, ``femoe: error: ...``, and exit status 2; anything else is a bug and
ends with one line and status 1. ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from femoe.errors import FemoeError

# module names under femoe.cli, each with register(subparsers)
_COMMANDS = ["mesh", "solve", "generate", "partition", "run", "predict"]


def build_parser() -> argparse.ArgumentParser:
    from femoe import __version__

    parser = argparse.ArgumentParser(
        prog="femoe",
        description="Hard physical constraints for neural PDE solvers on finite-element meshes.",
    )
    parser.add_argument("--version", action="version", version=f"femoe {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMANDS:
        importlib.import_module(f"femoe.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, format="%(message)s"
    )
    if not args.debug:  # scikit-fem logs every assembly at INFO
        logging.getLogger("skfem").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except FemoeError as exc:
        if args.debug:
            raise
        print(f"femoe: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the user named cannot be read or written
        if args.debug:
            raise
        what = f"{exc.strerror or exc}" + (f": {exc.filename}" if getattr(exc, "filename", None) else "")
        print(f"femoe: error: {what}; check the path and its permissions", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("femoe: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        first = (str(exc).splitlines() or [""])[0]
        print(f"femoe: internal error: {type(exc).__name__}: {first} (a bug: rerun with --debug for the "
              "traceback and report it)", file=sys.stderr)
        return 1
