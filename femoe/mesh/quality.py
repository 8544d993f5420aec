"""Element measures and shape-quality figures.

Two entry points work on scikit-fem meshes:

* :func:`element_measures` -- length, area or volume of every element, integrated with the
  mesh's own mapping (so curved second-order elements get their true measure);
* :func:`aspect_ratios` -- a shape figure that equals 1 for the ideal element (equilateral
  simplex, square, cube) and grows without bound as an element degenerates.

The private helpers on raw arrays (``_signed_measures``) are what :mod:`femoe.mesh.validate` uses to
check orientation and degeneracy before a scikit-fem mesh exists.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from skfem import Mesh, MeshHex1, MeshHex2, MeshLine1, MeshQuad1, MeshQuad2
from skfem.io.meshio import HEX_MAPPING
from skfem.quadrature import get_quadrature

#: Relative tolerance of the degeneracy test: an element is degenerate when
#: ``|measure| <= DEGENERATE_RTOL * h**dim`` with ``h`` the largest side of the bounding box.
DEGENERATE_RTOL = 1e-12

# corner -> its neighbours along the edges, for VTK-ordered quadrilaterals and hexahedra
_QUAD_CORNERS = np.array([[0, 1, 3], [1, 2, 0], [2, 3, 1], [3, 0, 2]])
_HEX_CORNERS = np.array(
    [
        [0, 1, 3, 4],
        [1, 2, 0, 5],
        [2, 3, 1, 6],
        [3, 0, 2, 7],
        [4, 7, 5, 0],
        [5, 4, 6, 1],
        [6, 5, 7, 2],
        [7, 6, 4, 3],
    ]
)
# 2x2(x2) Gauss points on [0, 1]: exact for det(J) of bilinear quads and trilinear hexahedra
_G = 0.5 + np.array([-1.0, 1.0]) / (2.0 * math.sqrt(3.0))


def _signed_measures(points: NDArray, cells: NDArray, kind: str) -> NDArray:
    """Signed measure of straight-sided elements from their corner nodes.

    Parameters
    ----------
    points
        ``(npoints, dim)`` coordinates, ``dim`` equal to the cell dimension.
    cells
        ``(ncells, k)`` node indices; only the corner nodes (first 2, 3, 4 or 8, in VTK/meshio
        order) are used, so second-order elements are measured with straight sides.
    kind
        ``"line"``, ``"triangle"``, ``"quad"``, ``"tetra"`` or ``"hexahedron"``.

    Returns
    -------
    numpy.ndarray
        ``(ncells,)`` measures, negative for elements with reversed (clockwise, left-handed)
        node order.
    """
    x = points[cells]  # (ncells, k, dim)
    if kind == "line":
        return x[:, 1, 0] - x[:, 0, 0]
    if kind == "triangle":
        a, b = x[:, 1] - x[:, 0], x[:, 2] - x[:, 0]
        return 0.5 * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])
    if kind == "tetra":
        e = np.stack([x[:, 1] - x[:, 0], x[:, 2] - x[:, 0], x[:, 3] - x[:, 0]], axis=-1)
        return np.linalg.det(e) / 6.0
    if kind == "quad":
        total = np.zeros(len(cells))
        for s in _G:
            for t in _G:
                dxs = (1 - t) * (x[:, 1] - x[:, 0]) + t * (x[:, 2] - x[:, 3])
                dxt = (1 - s) * (x[:, 3] - x[:, 0]) + s * (x[:, 2] - x[:, 1])
                total += 0.25 * (dxs[:, 0] * dxt[:, 1] - dxs[:, 1] * dxt[:, 0])
        return total
    if kind == "hexahedron":
        total = np.zeros(len(cells))
        for s in _G:
            for t in _G:
                for u in _G:
                    # derivatives of the trilinear shape functions (VTK corner order:
                    # bottom 0-1-2-3, top 4-5-6-7) along s, t and u
                    ds = np.array(
                        [
                            -(1 - t) * (1 - u),
                            (1 - t) * (1 - u),
                            t * (1 - u),
                            -t * (1 - u),
                            -(1 - t) * u,
                            (1 - t) * u,
                            t * u,
                            -t * u,
                        ]
                    )
                    dt = np.array(
                        [
                            -(1 - s) * (1 - u),
                            -s * (1 - u),
                            s * (1 - u),
                            (1 - s) * (1 - u),
                            -(1 - s) * u,
                            -s * u,
                            s * u,
                            (1 - s) * u,
                        ]
                    )
                    du = np.array(
                        [
                            -(1 - s) * (1 - t),
                            -s * (1 - t),
                            -s * t,
                            -(1 - s) * t,
                            (1 - s) * (1 - t),
                            s * (1 - t),
                            s * t,
                            (1 - s) * t,
                        ]
                    )
                    jac = np.stack(
                        [
                            np.einsum("i,nid->nd", ds, x[:, :8]),
                            np.einsum("i,nid->nd", dt, x[:, :8]),
                            np.einsum("i,nid->nd", du, x[:, :8]),
                        ],
                        axis=-1,
                    )
                    total += 0.125 * np.linalg.det(jac)
        return total
    raise ValueError(f"no measure formula for cell type {kind!r}")


def element_measures(mesh: Mesh, intorder: int | None = None) -> NDArray:
    """Length, area or volume of every element of a scikit-fem mesh.

    The measure is the integral of ``|det DF|`` over the reference element with the mesh's own
    mapping, so second-order (curved) elements are measured exactly up to quadrature.

    Parameters
    ----------
    mesh
        Any scikit-fem mesh (``MeshLine1``, ``MeshTri1/2``, ``MeshQuad1/2``, ``MeshTet1/2``,
        ``MeshHex1/2``...).
    intorder
        Quadrature order; defaults to twice the mesh's polynomial order times its dimension,
        which is exact for affine and multilinear elements.

    Returns
    -------
    numpy.ndarray
        ``(mesh.nelements,)`` non-negative measures.

    Examples
    --------
    >>> from skfem import MeshTri1
    >>> float(element_measures(MeshTri1()).sum())
    1.0
    """
    refdom = mesh.elem.refdom
    if intorder is None:
        intorder = 2 * mesh.dim() * (2 if mesh.nnodes > refdom.nnodes else 1)
    X, W = get_quadrature(refdom, intorder)
    detdf = mesh._mapping().detDF(X)  # (nelements, nqp)
    return np.abs(detdf) @ W


def _simplex_radius_ratio(x: NDArray) -> NDArray:
    """``R / (d r)`` for simplices given as ``(n, d + 1, d)`` corner coordinates."""
    n, k, d = x.shape
    if d == 1:
        return np.ones(n)
    e = x[:, 1:] - x[:, :1]  # (n, d, d), rows are edge vectors from corner 0
    det = np.abs(np.linalg.det(e))
    volume = det / math.factorial(d)
    # circumcentre c (relative to corner 0) solves 2 e c = |e|^2
    rhs = 0.5 * np.sum(e**2, axis=-1)
    with np.errstate(all="ignore"):
        safe = np.where(det[:, None, None] > 0, e, np.eye(d))
        c = np.linalg.solve(safe, rhs[..., None])[..., 0]
        R = np.linalg.norm(c, axis=-1)
        # inradius r = d * volume / (total facet measure)
        faces = 0.0
        for i in range(k):
            f = np.delete(x, i, axis=1)
            g = f[:, 1:] - f[:, :1]  # (n, d-1, d)
            gram = np.einsum("nid,njd->nij", g, g)
            faces = faces + np.sqrt(np.abs(np.linalg.det(gram))) / math.factorial(d - 1)
        r = d * volume / faces
        ratio = R / (d * r)
    return np.where(det > 0, ratio, np.inf)


def _corner_condition(x: NDArray, corners: NDArray) -> NDArray:
    """Worst corner condition number ``|J|_F |J^-1|_F / d`` of quads/hexes (VTK order)."""
    d = x.shape[-1]
    worst = np.ones(len(x))
    for row in corners:
        jac = np.stack([x[:, j] - x[:, row[0]] for j in row[1:]], axis=-1)  # (n, d, d)
        det = np.abs(np.linalg.det(jac))
        fro = np.sqrt(np.sum(jac**2, axis=(1, 2)))
        if d == 2:
            inv_fro = fro  # |adj J|_F = |J|_F in 2D
        else:
            c = [np.cross(jac[:, :, (i + 1) % 3], jac[:, :, (i + 2) % 3]) for i in range(3)]
            inv_fro = np.sqrt(sum(np.sum(ci**2, axis=-1) for ci in c))
        with np.errstate(all="ignore"):
            kappa = np.where(det > 0, fro * inv_fro / (d * det), np.inf)
        worst = np.maximum(worst, kappa)
    return worst


def aspect_ratios(mesh: Mesh) -> NDArray:
    """Shape quality of every element: 1 for the ideal shape, larger is worse.

    * Simplices (triangles, tetrahedra): the normalised radius ratio ``R / (d r)`` with ``R``
      the circumradius, ``r`` the inradius and ``d`` the dimension; 1 for the equilateral
      triangle / regular tetrahedron.
    * Quadrilaterals and hexahedra: the worst corner condition number
      ``|J|_F |J^-1|_F / d`` of the edge vectors at each corner (Knupp's metric); 1 for the
      square / cube, 1/sin(angle)-like growth for sheared elements.
    * Line elements are all 1.

    Only the corner nodes are used, so second-order elements are judged by their straight-
    sided counterpart. Degenerate elements give ``inf``.

    Parameters
    ----------
    mesh
        A scikit-fem mesh.

    Returns
    -------
    numpy.ndarray
        ``(mesh.nelements,)`` values ``>= 1``.
    """
    p = mesh.p[:, : mesh.nvertices].T
    if isinstance(mesh, MeshLine1):
        return np.ones(mesh.nelements)
    if isinstance(mesh, (MeshQuad1, MeshQuad2)):
        return _corner_condition(p[mesh.t[:4].T], _QUAD_CORNERS)
    if isinstance(mesh, (MeshHex1, MeshHex2)):
        vtk = mesh.t[HEX_MAPPING[:8]]
        return _corner_condition(p[vtk.T], _HEX_CORNERS)
    k = mesh.dim() + 1
    return _simplex_radius_ratio(p[mesh.t[:k].T])
