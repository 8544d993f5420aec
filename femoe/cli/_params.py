"""``--param KEY=VALUE`` options shared by ``femoe generate`` and ``femoe solve``."""

from __future__ import annotations

import argparse
import json
from typing import Any

from femoe.errors import ConfigError


def add_param_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--param", "-p", dest="params", action="append", default=[], metavar="KEY=VALUE",
        help="override a problem parameter (repeatable), e.g. --param D=1e-3; values outside "
             "their physical range are rejected",
    )


def parse_params(items: list[str]) -> dict[str, Any]:
    """``["D=1e-3", "ic=random_field"]`` -> ``{"D": 0.001, "ic": "random_field"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param expects KEY=VALUE; got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def check_seed(seed: int, option: str = "--seed") -> int:
    """Seeds are non-negative (numpy's generators refuse others); say so before any work."""
    if seed < 0:
        raise ConfigError(f"{option} must be a non-negative integer; got {seed}")
    return seed


def check_output_folder(path, option: str):
    """The folder an output file goes into must exist (a typo should not create folders)."""
    from pathlib import Path

    parent = Path(path).parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: the folder {parent} does not exist; create it first or pick "
                          "another path")
    return Path(path)
