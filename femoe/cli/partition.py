"""``femoe partition MESH -k K``: split a mesh among K experts and report balance and interface."""

from __future__ import annotations

import argparse
import json
import logging

from femoe.errors import ConfigError

logger = logging.getLogger(__name__)

_ELEMENTS = ("P1", "P2")


def _element_for(mesh, order: str):
    """The Lagrange element of ``order`` ("P1"/"P2") matching the mesh's cell type."""
    import skfem

    table = [
        (skfem.MeshLine1, skfem.ElementLineP1, skfem.ElementLineP2),
        (skfem.MeshTri1, skfem.ElementTriP1, skfem.ElementTriP2),
        (skfem.MeshQuad1, skfem.ElementQuad1, skfem.ElementQuad2),
        (skfem.MeshTet1, skfem.ElementTetP1, skfem.ElementTetP2),
        (skfem.MeshHex1, skfem.ElementHex1, skfem.ElementHex2),
    ]
    for mesh_type, p1, p2 in table:
        if isinstance(mesh, mesh_type):
            return (p1 if order == "P1" else p2)()
    raise ConfigError(f"no {order} element is known for a {type(mesh).__name__}")


def register(subparsers: argparse._SubParsersAction) -> None:
    from femoe.partition import available_methods

    p = subparsers.add_parser(
        "partition",
        help="split a mesh among K experts; report balance and interface",
        description="Partition the elements of MESH into K patches (one per expert), give every "
        "DOF one owner, and report per-expert sizes, imbalance (max/mean owned DOFs), "
        "interface size and edge cut. Optionally draw the patches of a 2D mesh.",
    )
    p.add_argument("mesh", metavar="MESH", help="mesh file (any format femoe.mesh reads)")
    p.add_argument("-k", "--experts", dest="k", type=int, required=True, metavar="K",
                   help="number of experts")
    p.add_argument("--method", default="auto", choices=available_methods(),
                   help="partitioner (default: auto = metis if pymetis is installed, else rcb)")
    p.add_argument("--element", default="P1", choices=_ELEMENTS,
                   help="Lagrange element whose DOFs are owned (default: P1)")
    p.add_argument("--seed", type=int, default=0, help="seed for random and metis (default: 0)")
    p.add_argument("--dirichlet-boundary", action="store_true",
                   help="treat all boundary DOFs as Dirichlet (not owned by any expert)")
    p.add_argument("--png", metavar="FILE", help="draw the patches (2D meshes only)")
    p.add_argument("--json", action="store_true", help="print the statistics as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import skfem

    from femoe.cli._params import check_output_folder, check_seed
    from femoe.mesh import read_mesh
    from femoe.partition import partition_experts, plot_partition

    check_seed(args.seed)
    if args.k < 1:
        raise ConfigError(f"-k/--experts must be at least 1; got {args.k}")
    if args.png:
        check_output_folder(args.png, "--png")
    mesh = read_mesh(args.mesh)
    basis = skfem.Basis(mesh, _element_for(mesh, args.element))
    dirichlet = basis.get_dofs().all() if args.dirichlet_boundary else None
    partition = partition_experts(basis, args.k, args.method, dirichlet=dirichlet,
                                  seed=args.seed)
    stats = {"mesh": str(args.mesh), "method": args.method, "element": args.element,
             **partition.stats()}
    if args.png:
        if mesh.p.shape[0] == 2:
            plot_partition(basis, partition, args.png)
            stats["png"] = str(args.png)
        else:
            logger.warning("--png ignored: drawing needs a 2D mesh, this one is %dD",
                           mesh.p.shape[0])
    if args.json:
        print(json.dumps(stats))
        return 0
    print(f"{stats['mesh']}: {stats['n_elements']} elements, {stats['n_dofs']} {args.element} "
          f"DOFs ({stats['n_dirichlet']} Dirichlet), K={stats['k']}, method {args.method}")
    print(f"{'expert':>6} {'elements':>9} {'owned':>8} {'interior':>9} {'local':>8}")
    for i in range(stats["k"]):
        print(f"{i:>6} {stats['elements'][i]:>9} {stats['owned'][i]:>8} "
              f"{stats['interior'][i]:>9} {stats['local'][i]:>8}")
    print(f"imbalance (max/mean owned) {stats['imbalance']:.3f}, interface {stats['interface']} "
          f"DOFs, edge cut {stats['edge_cut']}, halo overhead {stats['halo_overhead']:.3f}")
    if "png" in stats:
        print(f"patches drawn to {stats['png']}")
    return 0
