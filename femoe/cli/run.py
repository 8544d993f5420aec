"""``femoe run [CONFIG]``: train and compare soft / PI-HC / PI-HC-MoE / patch mode."""

from __future__ import annotations

import argparse
import logging
import sys

from femoe.problems import CONFIG_DIR

#: the bundled default run (package data of femoe.problems, so a regular install has it too)
DEFAULT_CONFIG = CONFIG_DIR / "default.toml"


def register(sub) -> None:
    p = sub.add_parser(
        "run", help="train and evaluate every method of a config (default: the bundled diffusion-sorption run)",
        description="Generate data if missing, train each method (soft, pihc, moe, patch), evaluate on the test "
                    "split, print a table and write results/<name>/ (metrics.json, PNG plots, VTU/XDMF "
                    "predictions, checkpoints and logs).")
    p.add_argument("config", nargs="?", default=None,
                   help="TOML run configuration (default: the bundled problems/configs/default.toml)")
    p.add_argument("--resume", action="store_true",
                   help="continue each method from its last checkpoint (refused if the config changed)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the checkpoints and logs of an earlier run in the same results folder and start "
                        "afresh (without it a fresh run there is refused)")
    p.add_argument("--methods", nargs="+", help="override the config's list of methods")
    p.add_argument("--results", help="override the results folder (default: results/)")
    p.add_argument("--in-process", action="store_true", help="train all methods in this process (no peak-memory "
                                                              "isolation; handy for debugging)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from femoe.train.config import config_from_dict, load_config
    from femoe.train.run import run

    logging.getLogger("skfem").setLevel(logging.WARNING)
    cfg = load_config(args.config or DEFAULT_CONFIG)
    if args.methods or args.results:
        d = cfg.to_dict()
        if args.methods:
            d["methods"] = args.methods
        if args.results:
            d["results"] = args.results
        name = cfg.name
        cfg = config_from_dict(d)
        cfg.name = name
    try:
        summary = run(cfg, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                      isolate=not args.in_process)
    except KeyboardInterrupt:
        print(f"femoe: interrupted: checkpoints are in {cfg.run_dir}/<method>/; continue with --resume",
              file=sys.stderr)
        return 130
    print(summary["table"])
    for method, error in summary["errors"].items():
        print(f"femoe: method {method} failed: {error.splitlines()[0]}", file=sys.stderr)
    print(f"results in {cfg.run_dir}/ (metrics.json, comparison.png, training.png, sample.png)")
    return 1 if summary["errors"] else 0
