"""Moving discrete fields between two meshes of one domain (e.g. a coarse training mesh and a
finer test mesh): the interpolation operator of a finite-element space at points, periodic
meshes included, and its field-by-field assembly between two :class:`Problem` spaces."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import skfem as fe
from scipy.spatial import cKDTree
from skfem.mesh.mesh_dg import MeshDG

from femoe.errors import MeshError, ProblemError

_SIMPLICES = ("RefLine", "RefTri", "RefTet")


def _period(mesh) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lower corner, box lengths)`` of a periodic mesh (scikit-fem's ``MeshDG``), else None."""
    if not isinstance(mesh, MeshDG):
        return None
    lo = mesh.p.min(axis=1)
    return lo, mesh.p.max(axis=1) - lo


def _inside(refdom, X: np.ndarray, tol: float) -> np.ndarray:
    """``(p,)`` whether the reference coordinates ``X (dim, p)`` lie in the reference cell."""
    if type(refdom).__name__ in _SIMPLICES:
        return (X >= -tol).all(axis=0) & (X.sum(axis=0) <= 1.0 + tol)
    lo, hi = refdom.p.min(axis=1)[:, None], refdom.p.max(axis=1)[:, None]
    return ((X >= lo - tol) & (X <= hi + tol)).all(axis=0)


def find_cells(basis, x: np.ndarray, *, candidates: int = 12, tol: float = 1e-9) -> tuple[np.ndarray, np.ndarray]:
    """The cell of ``basis``'s mesh holding each point of ``x`` ``(dim, p)``, and the point's
    reference coordinates in it ``(dim, p)`` (on a periodic mesh, ``MeshDG``, those of the
    point's image beside that cell, since the mapping of a cell across the seam is not wrapped).

    The candidate cells of a point are the ``candidates`` nearest by centroid (a k-d tree, with
    the period as its box on periodic meshes); the first whose inverse map puts the point in the
    reference cell (to ``tol``) is taken. Raises :class:`~femoe.errors.MeshError` naming a point
    that no candidate holds (a point outside the mesh)."""
    mesh, mapping = basis.mesh, basis.mapping
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[0] != mesh.dim():
        raise MeshError(f"points must have shape ({mesh.dim()}, p); got {x.shape}")
    refdom = mesh.elem.refdom
    centroids = mapping.F(refdom.p.mean(axis=1)[:, None])[:, :, 0]  # (dim, nelems)
    per = _period(mesh)
    if per is not None:
        lo, box = per
        tree = cKDTree(np.mod(centroids.T - lo, box), boxsize=box)
        _, near = tree.query(np.mod(x.T - lo, box), k=min(candidates, mesh.nelements))
    else:
        _, near = cKDTree(centroids.T).query(x.T, k=min(candidates, mesh.nelements))
    near = near.reshape(x.shape[1], -1)
    cells = np.full(x.shape[1], -1, dtype=np.int64)
    ref = np.zeros_like(x)
    for j in range(near.shape[1]):
        todo = np.nonzero(cells < 0)[0]
        if todo.size == 0:
            break
        c = near[todo, j]
        xp = x[:, todo]
        if per is not None:  # the image of each point nearest the candidate's centroid
            xp = xp - box[:, None] * np.round((xp - centroids[:, c]) / box[:, None])
        X = mapping.invF(xp[:, :, None], tind=c)[:, :, 0]
        ok = _inside(refdom, X, tol)
        cells[todo[ok]] = c[ok]
        ref[:, todo[ok]] = X[:, ok]
    if (cells < 0).any():
        i = int(np.nonzero(cells < 0)[0][0])
        raise MeshError(f"{int((cells < 0).sum())} point(s) lie in no cell of the mesh (e.g. {x[:, i].tolist()}); "
                        "interpolate only between meshes of the same domain")
    return cells, ref


def point_interpolation(basis, x: np.ndarray, located: tuple[np.ndarray, np.ndarray] | None = None) -> sp.csr_matrix:
    """``(p, N)`` matrix evaluating a function of the scalar space ``basis`` (``N`` DOFs) at the
    points ``x`` ``(dim, p)``: scikit-fem's ``probes``, with the cell search of
    :func:`find_cells`, which also works on periodic meshes. ``located``: that search's result
    for these points on this mesh, when the caller has it (one search serves every field)."""
    cells, ref = find_cells(basis, x) if located is None else located
    X = ref[:, :, None]
    phis = np.stack([np.asarray(basis.elem.gbasis(basis.mapping, X, k, tind=cells)[0]).reshape(-1)
                     for k in range(basis.Nbfun)])  # (Nbfun, p)
    if phis.shape[1] != x.shape[1]:
        raise ProblemError(f"point interpolation supports scalar fields; {type(basis.elem).__name__} has "
                           f"{phis.shape[1] // x.shape[1]} components")
    rows = np.tile(np.arange(x.shape[1]), basis.Nbfun)
    cols = basis.element_dofs[:, cells].reshape(-1)
    return sp.csr_matrix((phis.reshape(-1), (rows, cols)), shape=(x.shape[1], basis.N))


def _fields(basis, dofs: np.ndarray | None = None) -> tuple[list, list[np.ndarray]]:
    """The scalar bases of a space's fields and vector components (a mixed space split field by
    field, a vector field component by component), with their DOF numbers in the whole space."""
    dofs = np.arange(basis.N) if dofs is None else dofs
    if not (hasattr(basis.elem, "elems") or isinstance(basis.elem, fe.ElementVector)):
        return [basis], [dofs]
    bases, idx = [], []
    for b, i in zip(basis.split_bases(), basis.split_indices()):
        sub_b, sub_i = _fields(b, dofs[i])
        bases += sub_b
        idx += sub_i
    return bases, idx


def interpolation_operator(source, target) -> sp.csr_matrix:
    """``(target.n, source.n)`` matrix taking a DOF vector of ``source``'s space to the nodal
    interpolant on ``target``'s space, field by field (a mixed space's fields in their order,
    vector fields component by component): the value of each source field at each target DOF
    location of the same field.

    Both are :class:`Problem` s (or anything with a scikit-fem ``basis``) on meshes of one
    domain, e.g. a coarse training mesh and a finer test mesh. On nested meshes of one element
    it reproduces the source field exactly (prolongation). The fields must be Lagrange fields
    (nodal DOFs, scalar or vector), of the same elements in both spaces."""
    sb, tb = source.basis, target.basis
    s_bases, s_idx = _fields(sb)
    t_bases, t_idx = _fields(tb)
    if len(s_bases) != len(t_bases):
        raise ProblemError(f"the source space has {len(s_bases)} scalar field(s) and the target {len(t_bases)}; "
                           "interpolate between spaces of the same fields")
    rows, cols, vals = [], [], []
    located = {}  # fields of one element share their DOF locations: one cell search for them all
    for f, (bs, bt) in enumerate(zip(s_bases, t_bases)):
        if type(bs.elem) is not type(bt.elem):
            raise ProblemError(f"field {f} is {type(bs.elem).__name__} on the source and {type(bt.elem).__name__} "
                               "on the target; interpolate between spaces of the same elements")
        x = bt.doflocs
        key = (x.shape, x.tobytes())
        if key not in located:
            located[key] = find_cells(bs, x)
        P = point_interpolation(bs, x, located[key]).tocoo()
        rows.append(t_idx[f][P.row])
        cols.append(s_idx[f][P.col])
        vals.append(P.data)
    P = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(tb.N, sb.N))
    P.data[np.abs(P.data) < 1e-14] = 0.0  # basis functions vanishing at the point (round-off)
    P.eliminate_zeros()
    return P
