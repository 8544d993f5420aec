"""Dirichlet data: the entries a problem was given (:class:`DirichletData`) and what they do to
the rows of the residual and the Jacobian (:class:`DirichletRows`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from femoe.assembly.spaces import FieldInfo
from femoe.errors import FieldError, ProblemError, ShapeError

DirichletValue = float | str | Callable[..., np.ndarray]


@dataclass
class DirichletEntry:
    """One Dirichlet entry: boundary ``tag``, the field or component it fixes, its DOFs and value."""

    tag: str
    target: str  # field or component name
    dofs: np.ndarray  # component-major, ascending within a component
    counts: tuple[int, ...]  # DOFs per component (one entry for a scalar target)
    value: Any


class DirichletData:
    """The Dirichlet data of a problem as it was given, and the values ``g`` they take in a call.

    Owns
    ----
    entries
        One :class:`DirichletEntry` per boundary tag and field (or component) it fixes, in the
        order of the ``dirichlet`` dict (a DOF on several tags takes the value of the last one).
    dofs
        Every DOF some entry fixes, ascending.
    params
        ``{parameter name: entries}`` for the entries whose value names a parameter.

    Numbers and ``g(x)`` values do not change between calls; they are evaluated (and moved to
    a device) once per device and dtype.

    Parameters
    ----------
    dirichlet
        ``{tag: value}`` or ``{tag: {field_or_component: value}}`` (see :class:`Problem`).
    n, doflocs
        Number of DOFs and their coordinates ``(dim, n)`` (the points ``g(x)`` is evaluated at).
    fields
        The field table of the space.
    tag_dofs
        ``tag -> DOFs on the boundary tag`` (raises for an unknown or empty tag).
    target
        ``name -> (field, component index or None)`` for a field or component name (raises for
        an unknown name).
    """

    def __init__(self, dirichlet: Mapping[str, Any], *, n: int, doflocs: np.ndarray, fields: Sequence[FieldInfo],
                 tag_dofs: Callable[[str], np.ndarray], target: Callable[[str], tuple[FieldInfo, int | None]]):
        self.n = int(n)
        self.doflocs = doflocs
        self.entries = self._parse(dirichlet, fields, tag_dofs, target)
        names_used = [e.value for e in self.entries if isinstance(e.value, str)]
        self.params = {v: [e for e in self.entries if e.value == v] for v in names_used}
        is_dir = np.zeros(self.n, dtype=bool)
        for e in self.entries:
            is_dir[e.dofs] = True
        self.mask = is_dir
        self.dofs = np.nonzero(is_dir)[0]
        self._cache: dict[tuple, dict[str, torch.Tensor]] = {}

    @staticmethod
    def _parse(dirichlet, fields, tag_dofs, target) -> list[DirichletEntry]:
        names = tuple(f.name for f in fields)
        entries = []
        for tag, spec in dirichlet.items():
            on_tag = tag_dofs(tag)
            if on_tag.size == 0:
                raise ProblemError(f"Dirichlet boundary {tag!r} has no degrees of freedom")
            if isinstance(spec, Mapping):
                items = list(spec.items())
                if not items:
                    raise FieldError(f"Dirichlet data of {tag!r} is an empty dict; name a field, e.g. "
                                     f"{{{tag!r}: {{{names[0]!r}: 0.0}}}}")
            elif len(fields) > 1:
                raise FieldError(
                    f"Dirichlet data of {tag!r} does not say which fields it fixes, and the space has "
                    f"{len(fields)} fields {names}: fixing all of them (the pressure too) is "
                    f"rarely meant. Name them, e.g. dirichlet={{{tag!r}: {{{names[0]!r}: value}}}}, "
                    f"or a component like {_example_component(fields)!r}; use {{{tag!r}: {{'*': value}}}} "
                    "to fix every field"
                )
            else:
                items = [(names[0], spec)]
            for key, value in items:
                for nm in names if key == "*" else (str(key),):
                    f, c = target(nm)
                    comp_sets = [f.dofs] if not f.components else (
                        list(f.component_dofs) if c is None else [f.component_dofs[c]])
                    parts = [np.intersect1d(on_tag, d) for d in comp_sets]
                    dofs = np.concatenate(parts)
                    if dofs.size == 0:
                        raise FieldError(f"Dirichlet boundary {tag!r} holds no DOFs of {nm!r}")
                    entries.append(DirichletEntry(tag, nm, dofs, tuple(int(p.size) for p in parts), value))
        return entries

    @property
    def depends_on_time(self) -> bool:
        """Whether some entry's values depend on the time: a callable ``g(x, t)``."""
        return any(_in_time(e.value) for e in self.entries)

    @property
    def sizes(self) -> dict[str, list[int]]:
        """``{parameter name: [m of each entry naming it]}``: what a per-DOF parameter must hold."""
        return {name: [int(e.dofs.size) for e in entries] for name, entries in self.params.items()}

    def dofs_of(self, tag: str, field: str | None = None) -> np.ndarray:
        """The DOFs of the one entry of ``tag`` (and ``field``), in the order of its values."""
        hits = [e for e in self.entries if e.tag == tag and (field is None or e.target == field)]
        if len(hits) != 1:
            have = [(e.tag, e.target) for e in self.entries]
            raise FieldError(f"no single Dirichlet entry for tag {tag!r}" + (f", field {field!r}" if field else "")
                             + f"; entries (tag, field): {have}")
        return hits[0].dofs.copy()

    def values(self, p, t, batch: int, device, dtype, kind: Callable) -> torch.Tensor:
        """Values ``g`` on :attr:`dofs`, shape ``(batch, len(dofs))``, for the parameters ``p``
        of a call (a collected ``Params``); ``kind(p, name, value)`` resolves a parameter's kind."""
        g = torch.zeros(batch, self.n, dtype=dtype, device=device)
        key = (str(torch.device(device)), dtype)
        tc = self._cache.setdefault(key, {})
        for i, e in enumerate(self.entries):
            fixed = not isinstance(e.value, str) and not _in_time(e.value)
            if fixed and f"value_{i}" in tc:
                val = tc[f"value_{i}"]
            else:
                val = self._entry_values(e, p, t, device, dtype, kind)
                if fixed:
                    tc[f"value_{i}"] = val
            if val.shape[0] not in (1, batch):
                raise ShapeError(f"Dirichlet data of {e.tag!r} ({e.target!r}) has batch {val.shape[0]} but the "
                                 f"call has batch {batch}")
            if f"dofs_{i}" not in tc:
                tc[f"dofs_{i}"] = torch.as_tensor(e.dofs, device=device)
            g = g.index_copy(1, tc[f"dofs_{i}"], val.expand(batch, -1))
        return g[:, self.dofs]

    def _entry_values(self, e: DirichletEntry, p, t, device, dtype, kind: Callable) -> torch.Tensor:
        """Values of one entry, ``(1 or B, m)``."""
        m, ncomp = int(e.dofs.size), len(e.counts)
        value = e.value
        where = f"Dirichlet data of {e.tag!r} ({e.target!r})"
        if isinstance(value, str):
            if value not in p:
                raise ProblemError(f"{where} names parameter {value!r}, which was not given; pass it in params")
            val = p[value]
            if not isinstance(val, torch.Tensor):
                raise ProblemError(f"{where}: parameter {value!r} must be a number or tensor; got {type(val).__name__}")
            k = kind(p, value, val)
            if k == "dirichlet":
                return val.reshape(-1, m)
            if k != "constant":
                raise ProblemError(f"{where}: parameter {value!r} is {k!r}; a Dirichlet parameter is a "
                                   f"per-sample constant or one value per DOF (B, {m})")
            return val.reshape(-1, 1).expand(-1, m)
        if isinstance(value, torch.Tensor):
            raise ProblemError(f"{where} is a tensor; give differentiable boundary data as a named parameter: "
                               f"dirichlet={{{e.tag!r}: {{{e.target!r}: 'g'}}}} and params={{'g': tensor}}")
        if callable(value):
            tt = 0.0 if t is None else t
            parts, start = [], 0
            for c, cnt in enumerate(e.counts):
                x = self.doflocs[:, e.dofs[start : start + cnt]]
                start += cnt
                arr = np.asarray(value(x, float(tt)) if n_args(value) >= 2 else value(x), dtype=float)
                if ncomp > 1:
                    if arr.ndim >= 1 and arr.shape[0] == ncomp and arr.ndim <= 2:
                        arr = arr[c]
                    elif arr.ndim != 0:
                        raise ProblemError(
                            f"{where}: g(x) must return shape ({ncomp}, m) for the {ncomp} components of "
                            f"{e.target!r} (or a number); got {arr.shape}")
                try:
                    parts.append(np.broadcast_to(arr, (cnt,)))
                except ValueError:
                    raise ProblemError(f"{where}: g(x) returned shape {arr.shape} for {cnt} DOFs") from None
            return torch.as_tensor(np.concatenate(parts), dtype=dtype, device=device).reshape(1, m)
        arr = np.asarray(value, dtype=float)
        if arr.ndim == 0:
            return torch.full((1, m), float(arr), dtype=dtype, device=device)
        if arr.shape == (ncomp,) and ncomp > 1:
            return torch.as_tensor(np.repeat(arr, e.counts), dtype=dtype, device=device).reshape(1, m)
        if arr.shape == (m,):
            return torch.as_tensor(arr, dtype=dtype, device=device).reshape(1, m)
        raise ProblemError(f"{where}: a value of shape {arr.shape} fits neither one number per component "
                           f"({ncomp}) nor one per DOF ({m})")


class DirichletRows:
    """Which rows of a weak form are Dirichlet rows ``R_i = u_i - g_i``, and what that does to
    its Jacobian on a :class:`SparsityPattern`: the stored entries of those rows are zeroed and
    their diagonal becomes 1, so the system stays square.

    Owns
    ----
    dofs
        The Dirichlet DOFs, ascending.
    free
        The other DOFs, ascending.
    in_row
        Per stored entry of the pattern: whether it lies in a Dirichlet row.
    diag
        Per stored entry: whether it is the diagonal of a Dirichlet row.
    """

    def __init__(self, is_dirichlet: np.ndarray, pattern):
        self.dofs = np.nonzero(is_dirichlet)[0]
        self.free = np.nonzero(~is_dirichlet)[0]
        self.in_row = is_dirichlet[pattern.csr.rows]
        self.diag = np.zeros(pattern.nnz, dtype=bool)
        self.diag[pattern.diag_index[self.dofs]] = True


def _example_component(fields: Sequence[FieldInfo]) -> str:
    for f in fields:
        if f.components:
            return f.components[-1]
    return fields[-1].name


def _in_time(value) -> bool:
    """Whether a Dirichlet value depends on the time: a callable ``g(x, t)``."""
    return callable(value) and n_args(value) >= 2


def n_args(f) -> int:
    """Number of parameters of a callable (1 where Python cannot tell)."""
    import inspect

    try:
        return len(inspect.signature(f).parameters)
    except (TypeError, ValueError):
        return 1
