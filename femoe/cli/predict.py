"""``femoe predict CHECKPOINT --input FILE --out FILE.vtu``: apply a trained model to new inputs."""

from __future__ import annotations

import argparse
import logging


def register(sub) -> None:
    p = sub.add_parser("predict", help="apply a trained model (network + constraint layer) to new inputs",
                       description="Load a checkpoint written by `femoe run`, apply its network and constraint layer "
                                   "to the inputs (a .npy array of shape (samples, m) or (m,), or an HDF5 data file "
                                   "whose 'inputs' are used) and write the predicted fields (VTU for steady "
                                   "problems, XDMF time series otherwise; one file per sample) and a .npy array.")
    p.add_argument("checkpoint", help="checkpoint.pt from results/<run>/<method>/")
    p.add_argument("--input", required=True, help=".npy or .h5 file of inputs")
    p.add_argument("--out", required=True, help="output file (.vtu or .xdmf); sample i > 0 gets suffix _i")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from femoe.train.predict import load_inputs, predict_file

    logging.getLogger("skfem").setLevel(logging.WARNING)
    paths = predict_file(args.checkpoint, load_inputs(args.input), args.out)
    for p in paths:
        print(f"wrote {p}")
    return 0
