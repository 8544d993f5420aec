"""Pictures of the patches of a 2D mesh."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from femoe.errors import ConfigError
from femoe.partition._experts import ExpertPartition


def _colours(k: int) -> np.ndarray:
    from matplotlib import colormaps

    if k <= 10:
        return colormaps["tab10"](np.arange(k))
    if k <= 20:
        return colormaps["tab20"](np.arange(k))
    # many experts: spread hues, shuffled so that neighbouring ids do not look alike
    order = np.random.default_rng(0).permutation(k)
    return colormaps["turbo"](order / max(k - 1, 1))


def plot_partition(
    basis,
    partition: ExpertPartition,
    path: str | Path | None = None,
    *,
    mark_interface: bool = True,
    dpi: int = 150,
):
    """Draw the elements of a 2D mesh coloured by expert, with interface DOFs marked.

    Uses matplotlib's Agg canvas directly, so it never touches the pyplot state or the
    global backend.

    Parameters
    ----------
    basis : skfem.CellBasis
        The basis ``partition`` was built from (its mesh must be 2D).
    partition : ExpertPartition
        The experts to draw.
    path : str or Path, optional
        Where to save the figure (format from the suffix, e.g. ``.png``).
    mark_interface : bool
        Draw the interface DOFs (at ``basis.doflocs``) as black dots.
    dpi : int
        Resolution when saving.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    mesh = basis.mesh
    if mesh.p.shape[0] != 2:
        raise ConfigError(
            f"plot_partition draws 2D meshes only; this mesh is {mesh.p.shape[0]}D"
        )
    corners = {3: 3, 4: 4}.get(mesh.t.shape[0], mesh.t.shape[0])
    polygons = np.transpose(mesh.p[:, mesh.t[:corners]], (2, 1, 0))  # (nelem, corners, 2)
    colours = _colours(partition.k)

    extent = np.ptp(mesh.p, axis=1)
    aspect = float(np.clip(extent[1] / extent[0], 0.25, 4.0)) if extent[0] > 0 else 1.0
    fig = Figure(figsize=(7.0, 7.0 * aspect + 0.6) if aspect <= 1 else (7.0 / aspect, 7.6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.add_collection(
        PolyCollection(polygons, facecolors=colours[partition.element_part],
                       edgecolors="0.3", linewidths=0.2)
    )
    if mark_interface and partition.interface.size:
        xy = np.asarray(basis.doflocs)[:, partition.interface]
        ax.scatter(xy[0], xy[1], s=4, c="k", linewidths=0, label="interface DOFs")
        ax.legend(loc="upper right", fontsize="small")
    ax.set_aspect("equal")
    ax.autoscale_view()
    stats = partition.stats()
    ax.set_title(
        f"K={partition.k}  imbalance={stats['imbalance']:.3f}  |Γ|={stats['interface']}"
    )
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig
