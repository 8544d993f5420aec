"""``femoe generate``: reference-solution data sets for a registered problem.

``femoe generate PROBLEM --n-train N --n-test M --out DIR [--seed S] [--workers W]`` writes
``DIR/train.h5`` and ``DIR/test.h5`` (see :mod:`femoe.data.hdf5` for the layout). Running the
same command again after an interruption resumes where it stopped.
"""

from __future__ import annotations

import argparse

from femoe.cli._params import add_param_option, parse_params


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``generate`` command to the ``femoe`` parser."""
    from femoe.problems import PROBLEMS

    parser = subparsers.add_parser(
        "generate",
        help="generate train/test data sets of reference solutions (HDF5)",
        description=(
            "Sample inputs (initial conditions or coefficient fields) of a problem, solve each with "
            "the reference solver, and write DIR/train.h5 and DIR/test.h5. Deterministic for a "
            "seed; resumable (run the same command again after an interruption). "
            f"Problems: {', '.join(PROBLEMS)}."
        ),
    )
    parser.add_argument("problem", metavar="PROBLEM", help=f"one of: {', '.join(PROBLEMS)}")
    parser.add_argument("--n-train", type=int, required=True, metavar="N", help="training samples (> 0)")
    parser.add_argument("--n-test", type=int, required=True, metavar="M", help="test samples (> 0)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created if needed)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    parser.add_argument("--workers", type=int, default=1, metavar="W",
                        help="solve samples in W processes (default 1)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace complete files that were generated with other settings")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_param_option(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    if not args.debug:
        logging.getLogger("skfem").setLevel(logging.WARNING)  # scikit-fem logs every assembly at INFO
    from femoe.data import generate, read_dataset

    paths = generate(args.problem, args.out, args.n_train, args.n_test, seed=args.seed,
                     workers=args.workers, params=parse_params(args.params), overwrite=args.overwrite,
                     progress=not args.no_progress)
    for split, path in paths.items():
        d = read_dataset(path)
        shape = "x".join(str(s) for s in d.solutions.shape)
        print(f"{split:5s} {path}  solutions {shape}" + ("" if d.times is None else f", {d.times.size} times"))
    return 0
