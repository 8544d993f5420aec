"""Names for the fields and components of a (vector or mixed) scikit-fem basis.

A scalar basis has one field, ``"u"``. An ``ElementVector`` basis has one vector field ``"u"``
with components ``"u_x"``, ``"u_y"`` (``"u_z"``) when it has as many components as the mesh has
dimensions (``"u_0"``, ``"u_1"``, ... otherwise). An ``ElementComposite`` basis has one field per
sub-element, named ``"u0"``, ``"u1"``, ... unless names are given (``("u", "p")``); a vector
sub-element again has components (``"u_x"``, ``"u_y"``). Every name maps to the sorted global DOF
numbers it owns; scikit-fem's ``split_indices`` and ``split_bases`` supply them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from femoe.errors import FieldError


@dataclass(frozen=True)
class FieldInfo:
    """One field of a basis: its name, global DOFs and components (``()`` for a scalar)."""

    name: str
    dofs: np.ndarray
    components: tuple[str, ...]
    component_dofs: tuple[np.ndarray, ...]
    basis: object  # the scikit-fem basis of this field alone


def _component_names(field: str, ncomp: int, dim: int) -> tuple[str, ...]:
    suffix = "xyz"[:ncomp] if ncomp == dim and ncomp <= 3 else [str(i) for i in range(ncomp)]
    return tuple(f"{field}_{s}" for s in suffix)


def _n_value_components(basis) -> int:
    v = basis.basis[0][0]
    return int(np.prod(v.shape[:-2], dtype=int)) if len(v.shape) > 2 else 1


def field_table(basis, names: Sequence[str] | None = None) -> list[FieldInfo]:
    """The fields of ``basis`` with their DOFs and components (see the module docstring)."""
    composite = len(basis.basis[0]) > 1
    subs = list(basis.split_bases()) if composite else [basis]
    idx = [np.asarray(i, dtype=np.int64) for i in basis.split_indices()] if composite else [np.arange(basis.N)]
    if names is None:
        names = ("u",) if not composite else tuple(f"u{i}" for i in range(len(subs)))
    names = tuple(str(n) for n in names)
    if len(names) != len(subs):
        raise FieldError(
            f"fields={names!r} names {len(names)} field(s) but the basis has {len(subs)} "
            f"({type(basis.elem).__name__}); give one name per sub-element, e.g. "
            f"fields={tuple(f'u{i}' for i in range(len(subs)))!r}"
        )
    if len(set(names)) != len(names) or any(not n or n == "*" for n in names):
        raise FieldError(f"field names must be distinct, non-empty and not '*'; got {names!r}")
    dim = basis.mesh.dim()
    out = []
    for name, sub, gidx in zip(names, subs, idx):
        ncomp = _n_value_components(sub)
        if ncomp == 1:
            out.append(FieldInfo(name, np.sort(gidx), (), (), sub))
            continue
        local = sub.split_indices()
        comps = tuple(np.sort(gidx[np.asarray(c, dtype=np.int64)]) for c in local)
        out.append(FieldInfo(name, np.sort(gidx), _component_names(name, ncomp, dim), comps, sub))
    taken = {n for f in out for n in (f.name, *f.components)}
    if len(taken) != sum(1 + len(f.components) for f in out):
        raise FieldError(f"field names {names!r} clash with component names; rename the fields")
    return out
