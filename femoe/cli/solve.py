"""``femoe solve``: one reference solve of a registered problem, written for ParaView and as a PNG.

``femoe solve [PROBLEM] [--out DIR] [--seed S]`` samples one input, solves it, writes
``DIR/solution.vtu`` (steady) or ``DIR/solution.xdmf`` + ``.h5`` (time series), and
``DIR/solution.png``, and prints a short summary. The default problem is ``darcy_2d`` on the
bundled plate-with-holes mesh (about a second).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from femoe.cli._params import add_param_option, check_seed, parse_params

DEFAULT_PROBLEM = "darcy_2d"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``solve`` command to the ``femoe`` parser."""
    from femoe.problems import PROBLEMS

    parser = subparsers.add_parser(
        "solve",
        help="solve one sample of a problem and write VTU/XDMF and PNG output",
        description=(
            "Draw one input of PROBLEM (default darcy_2d), solve it with the reference solver, and "
            "write DIR/solution.vtu (DIR/solution.xdmf for time-dependent problems) and "
            f"DIR/solution.png. Problems: {', '.join(PROBLEMS)}."
        ),
    )
    parser.add_argument("problem", nargs="?", default=DEFAULT_PROBLEM, metavar="PROBLEM",
                        help=f"one of: {', '.join(PROBLEMS)} (default {DEFAULT_PROBLEM})")
    parser.add_argument("--out", default="femoe_solve", metavar="DIR", help="output folder (default femoe_solve)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="random seed of the input (default 0)")
    add_param_option(parser)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import logging

    if not args.debug:
        logging.getLogger("skfem").setLevel(logging.WARNING)  # scikit-fem logs every assembly at INFO
    from femoe.data.generate import _check_out
    from femoe.mesh import write_fields
    from femoe.problems import get_problem

    check_seed(args.seed)
    spec = get_problem(args.problem)
    params = parse_params(args.params)
    spec.parameters(**params)  # validate before touching the output folder
    out = Path(args.out)
    _check_out(out)

    t0 = time.perf_counter()
    problem = spec.build(**params)
    t_build = time.perf_counter() - t0
    x = spec.sample_inputs(np.random.default_rng(args.seed), 1, problem)[0]
    t1 = time.perf_counter()
    times, u = spec.reference(problem, x)
    t_solve = time.perf_counter() - t1

    mesh = spec.output_mesh(problem)
    fields = spec.output_fields(problem, u)
    if times is None:
        if args.problem == "darcy_2d":
            fields["kappa"] = np.asarray(x)
        vtu = write_fields(out / "solution.vtu", mesh, fields)
    else:
        vtu = write_fields(out / "solution.xdmf", mesh, fields, times=times)
    png = out / "solution.png"
    _plot(png, spec, mesh, fields, times)

    info = getattr(problem, "last_reference_info", {})
    print(f"problem     {spec.name}: {spec.description}")
    print(f"mesh        {spec.mesh_file or 'built in'} ({mesh.nelements} elements, {type(mesh).__name__})")
    print(f"DOFs        {problem.n}" + ("" if times is None else f" x {len(times)} saved levels"))
    if "newton_iterations" in info:
        print(f"Newton      {info['newton_iterations']} iterations"
              + (f" over {info['steps']} time steps" if "steps" in info else ""))
    elif "steps" in info:
        print(f"time steps  {info['steps']} (explicit SSP-RK3, dt {info['dt']:.3g})")
    print(f"time        build {t_build:.2f} s, solve {t_solve:.2f} s")
    print(f"wrote       {vtu}")
    print(f"wrote       {png}")
    return 0


def _plot(path: Path, spec, mesh, fields: dict, times) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.tri import Triangulation

    dim = mesh.p.shape[0]
    name = next(iter(fields))
    if dim == 1 and times is not None:
        x = mesh.p[0]
        order = np.argsort(x)
        fig, ax = plt.subplots(figsize=(7, 4))
        im = ax.imshow(fields[name][:, order].T, origin="lower", aspect="auto",
                       extent=[times[0], times[-1], x[order][0], x[order][-1]], cmap="viridis")
        ax.set_xlabel("t")
        ax.set_ylabel("x")
        fig.colorbar(im, ax=ax, label=name)
    elif dim == 1:
        fig, ax = plt.subplots(figsize=(6, 4))
        order = np.argsort(mesh.p[0])
        ax.plot(mesh.p[0][order], fields[name][order])
        ax.set_xlabel("x")
        ax.set_ylabel(name)
    else:
        tri = Triangulation(mesh.p[0], mesh.p[1], mesh.t[:3].T)
        panels = ([(name, fields[name][0], f"{name}, t = {times[0]:g}"),
                   (name, fields[name][-1], f"{name}, t = {times[-1]:g}")] if times is not None
                  else [(k, v, k) for k, v in fields.items()])
        fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
        for ax, (_, values, title) in zip(axes[0], panels):
            values = np.asarray(values)
            shading = "gouraud" if values.size == mesh.nvertices else "flat"
            im = ax.tripcolor(tri, values, shading=shading, cmap="viridis")
            ax.set_aspect("equal")
            ax.set_title(title)
            fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(spec.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
