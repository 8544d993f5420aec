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
