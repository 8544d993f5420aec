"""Parameter kinds: what each parameter of a problem is, and how its values reach the forms."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch

from femoe.assembly.fields import Field, FormParams
from femoe.assembly.torch_basis import TorchBasis
from femoe.errors import AmbiguousParameterError, ProblemError, ShapeError

COEFF_KINDS = ("constant", "vector", "nodal", "element", "quadrature", "dirichlet")


class Params(dict):
    """Parameter tensors of one call plus the resolved kind of each (``kinds``)."""

    kinds: dict[str, Any]


class ParameterKinds:
    """The parameters of a problem: their declared kinds and defaults, the kind of a value read
    from its shape, and the form each kind takes inside an integrand's ``w``.

    Owns
    ----
    coefficients
        ``{name: kind}`` as declared (``Problem(coefficients=...)``): a string of
        :data:`COEFF_KINDS` or a scikit-fem basis.
    defaults
        ``{name: value}``, overridden by the ``params`` of each call.
    dirichlet_sizes
        ``{name: [m, ...]}`` for the parameters named by Dirichlet entries: the DOFs of each
        entry (what a ``"dirichlet"`` parameter holds).

    It reads shapes against ``n`` DOFs, the elements of ``mesh`` and the quadrature of
    ``basis``, and keeps the torch bases of parameters declared with their own basis.
    """

    def __init__(self, coefficients: Mapping[str, Any], defaults: Mapping[str, Any], *, n: int, mesh, basis,
                 dirichlet_sizes: Mapping[str, list[int]]):
        self.check_declared_kinds(coefficients)
        self.coefficients = coefficients
        self.defaults = defaults
        self.dirichlet_sizes = dict(dirichlet_sizes)
        self.n = int(n)
        self.mesh = mesh
        self.basis = basis
        self._bases: dict[tuple[str, bool, str], TorchBasis] = {}

    @staticmethod
    def check_declared_kinds(coefficients: Mapping[str, Any]) -> None:
        """Refuse a declared kind that is neither one of :data:`COEFF_KINDS` nor a basis."""
        for k, v in coefficients.items():
            if isinstance(v, str) and v not in COEFF_KINDS:
                raise ProblemError(f"coefficient {k!r}: kind {v!r} is not one of {COEFF_KINDS} or a basis")

    @property
    def nqp(self) -> int:
        """Quadrature points per element."""
        return int(np.asarray(self.basis.dx).shape[-1])

    def kind(self, name: str, value, batch: int | None = None):
        """The kind of parameter ``name`` with ``value`` (see :meth:`Problem.parameter_kind`)."""
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(np.asarray(value, dtype=float))
        kind = self.coefficients.get(name)
        shape = tuple(value.shape)
        n, nel, nqp = self.n, self.mesh.nelements, self.nqp
        dir_m = self.dirichlet_sizes.get(name, [])
        def how(kinds=None):
            k = " or ".join(repr(x) for x in kinds) if kinds else f"one of {list(COEFF_KINDS)} or a basis"
            return f"declare it: Problem(coefficients={{{name!r}: KIND}}) with KIND {k}"

        if kind is not None:
            self._check_declared(name, kind, shape, dir_m)
            return kind
        if value.dim() == 0 or shape[-1:] == (1,) and value.dim() <= 2:
            return "constant"
        fits = []
        last = shape[-1]
        if value.dim() in (1, 2):
            if last == n:
                fits.append(("nodal", f"a nodal field (n = {n} DOFs)"))
            if last == nel:
                fits.append(("element", f"per-element values (nelements = {nel})"))
            if len(dir_m) == 1 and last == dir_m[0]:
                fits.append(("dirichlet", f"one Dirichlet value per DOF of its entry (m = {dir_m[0]})"))
        if value.dim() in (2, 3) and shape[-2:] == (nel, nqp):
            fits.append(("quadrature", f"values at the quadrature points ({nel}, {nqp})"))
        if value.dim() == 1:
            k = shape[0]
            batch_ok = (batch is not None and batch > 1 and k == batch) or (
                (batch is None or batch == 1) and 2 * k < min(n, nel) and not fits)
            if batch_ok:
                fits.append(("constant", f"{k} per-sample constants"))
            elif not fits:
                raise AmbiguousParameterError(
                    f"cannot tell what parameter {name!r} of shape {shape} is: it is not a nodal field "
                    f"(n = {n}), not per-element values (nelements = {nel})"
                    + (f", not one value per Dirichlet DOF (m = {dir_m})" if dir_m else "")
                    + f", and as a batch of {k} per-sample constants it does not match the batch of u "
                    f"({batch if batch is not None else 'none'}). A field from another mesh or of the wrong "
                    f"length is the usual cause; if it really is a batch of constants, give u that batch or "
                    f"{how(['constant'])}"
                )
            elif len(dir_m) == 1 and k == dir_m[0]:
                # (m,) could be one sample's per-DOF values or m samples' constants
                fits.append(("constant", f"{k} per-sample constants"))
        if len(fits) == 1:
            return fits[0][0]
        if not fits:
            raise AmbiguousParameterError(
                f"cannot tell what parameter {name!r} of shape {shape} is: its last dimension is neither "
                f"n = {n} (nodal), nelements = {nel} (element), 1 (per-sample constant)"
                + (f", m = {dir_m} (Dirichlet values per DOF)" if dir_m else "")
                + f" nor its last two ({nel}, {nqp}) (quadrature); check its shape or {how()}"
            )
        raise AmbiguousParameterError(
            f"parameter {name!r} of shape {shape} is ambiguous: it could be "
            + " or ".join(d for _, d in fits) + f"; {how([k for k, _ in fits])}"
        )

    def _check_declared(self, name, kind, shape, dir_m) -> None:
        n, nel, nqp = self.n, self.mesh.nelements, self.nqp
        if not isinstance(kind, str):
            return  # a basis: checked when the field is built
        ok = {
            "constant": len(shape) <= 1 or (len(shape) == 2 and shape[1] == 1),
            "vector": len(shape) in (1, 2),
            "nodal": len(shape) in (1, 2) and shape[-1] == n,
            "element": len(shape) in (1, 2) and shape[-1] == nel,
            "quadrature": len(shape) in (2, 3) and shape[-2:] == (nel, nqp),
            "dirichlet": len(dir_m) == 1 and len(shape) in (1, 2) and shape[-1] == dir_m[0],
        }[kind]
        if not ok:
            expect = {
                "constant": "(), (B,) or (B, 1)",
                "vector": "(ncomp,) or (B, ncomp)",
                "nodal": f"({n},) or (B, {n})",
                "element": f"({nel},) or (B, {nel})",
                "quadrature": f"({nel}, {nqp}) or (B, {nel}, {nqp})",
                "dirichlet": (f"({dir_m[0]},) or (B, {dir_m[0]})" if len(dir_m) == 1 else
                              "a parameter named by exactly one Dirichlet entry"),
            }[kind]
            raise ShapeError(f"parameter {name!r} is declared {kind!r} and must have shape {expect}; got {shape}")

    def resolve(self, p, name, value):
        """The kind of ``p[name]``: the one :meth:`collect` resolved, else read from ``value``."""
        kinds = getattr(p, "kinds", None)
        if kinds is not None and name in kinds:
            return kinds[name]
        return self.kind(name, value)

    def collect(self, params: Mapping[str, Any] | None, device, dtype, batch: int | None = None) -> Params:
        """The defaults overridden by ``params``, as tensors on ``device`` (callables as they
        are), with the kind of each tensor in ``.kinds``."""
        merged = {**self.defaults, **(params or {})}
        out = Params()
        for k, v in merged.items():
            if isinstance(v, torch.Tensor):
                if v.is_floating_point() and v.dtype != dtype:
                    raise ShapeError(f"parameter {k!r} has dtype {v.dtype} but u has {dtype}; convert one of them")
                out[k] = v.to(device)
            elif callable(v):
                out[k] = v
            else:
                out[k] = torch.as_tensor(v, dtype=dtype, device=device)
        out.kinds = {k: self.kind(k, v, batch=batch) for k, v in out.items() if isinstance(v, torch.Tensor)}
        return out

    def form_params(self, tb: TorchBasis, params: dict, B: int, device, dtype, t, *, n: int | None = None) -> FormParams:
        """``w`` of an integrand on ``tb``: geometry (``x``, ``h``, ``n``), ``t`` and every
        parameter in the shape of a field value. ``n`` is the length of nodal values in this
        evaluation (default the problem's; a patch union's after gathering)."""
        n = self.n if n is None else n
        tt = tb.tensors(device, dtype)
        # geometry broadcasts like a field value: (components, test jet, batch, elements, points)
        w = FormParams(x=tt["x"][:, None, None])
        if "h" in tt:
            w["h"] = tt["h"][None, None]
        if "n" in tt:
            w["n"] = tt["n"][:, None, None]
        if t is not None:
            w["t"] = t if isinstance(t, torch.Tensor) else torch.as_tensor(t, dtype=dtype, device=device)
            if w["t"].dim() == 1:
                w["t"] = w["t"].reshape(-1, 1, 1)
        for name, value in params.items():
            if callable(value) and not isinstance(value, torch.Tensor):
                w[name] = value
                continue
            kind = self.resolve(params, name, value)
            if kind == "constant":
                w[name] = value.reshape(-1, 1, 1) if value.dim() >= 1 else value
            elif kind == "vector":
                # components first, then the test-jet, batch, element and point axes of a field
                v = value if value.dim() == 2 else value.unsqueeze(0)
                w[name] = v.T.reshape(v.shape[1], 1, v.shape[0], 1, 1)
            elif kind == "dirichlet":
                w[name] = value
            elif kind == "element":
                v = value if value.dim() == 2 else value.unsqueeze(0)
                cells = torch.as_tensor(tb.element_index, device=v.device)
                w[name] = Field(v[:, cells].unsqueeze(-1), None)
            elif kind == "quadrature":
                if tb.is_facet:
                    continue  # values at cell quadrature points mean nothing on facets
                v = value if value.dim() == 3 else value.unsqueeze(0)
                cells = torch.as_tensor(getattr(tb, "cells", tb.element_index), device=v.device)
                w[name] = Field(v[:, cells], None)
            else:
                ptb = self._basis_of(name, kind, tb)
                v = value if value.dim() == 2 else value.unsqueeze(0)
                expected = n if kind == "nodal" else ptb.basis.N
                if v.shape[-1] != expected:
                    raise ShapeError(f"parameter {name!r} must have {expected} DOF values; got {tuple(value.shape)}")
                fields = ptb.fields(ptb.jets(v))
                w[name] = fields[0] if len(fields) == 1 else fields
        return w

    def _basis_of(self, name: str, kind, tb: TorchBasis) -> TorchBasis:
        """The torch basis a nodal or own-basis parameter is interpolated with on ``tb``."""
        if kind == "nodal":
            return tb
        key = (name, tb.is_facet, id(tb))
        if key not in self._bases:
            if tb.is_facet:
                self._bases[key] = TorchBasis(tb.basis.with_element(kind.elem))
            else:
                if kind.mesh is not self.mesh or kind.quadrature[0].shape != self.basis.quadrature[0].shape:
                    raise ProblemError(f"the basis of parameter {name!r} must use the problem's mesh and quadrature "
                                       "(build it with problem.basis.with_element(element))")
                self._bases[key] = TorchBasis(kind)
        return self._bases[key]


class PatchParameters:
    """The parameters of a patch union: their kinds are the parent problem's (nodal values come
    on the parent's DOFs, element values on its elements), and :meth:`collect` gathers nodal
    values onto the union's ``n`` DOFs (``index``: the parent DOF of each union DOF).

    Parameters on their own basis are refused: their values would need restricting too."""

    def __init__(self, parent: ParameterKinds, index: np.ndarray, n: int):
        if any(isinstance(v, TorchBasis) or hasattr(v, "elem") for v in parent.coefficients.values()):
            raise ProblemError("patches of a problem with parameters on their own basis are not supported; "
                               "give such parameters as nodal or element values")
        self.parent = parent
        self.index = index
        self.n = int(n)

    @property
    def coefficients(self) -> Mapping[str, Any]:
        """The parent's declared kinds."""
        return self.parent.coefficients

    @property
    def defaults(self) -> Mapping[str, Any]:
        """The parent's defaults (nodal ones on the parent's DOFs)."""
        return self.parent.defaults

    @property
    def dirichlet_sizes(self) -> Mapping[str, list[int]]:
        """The parent's Dirichlet parameters (the union takes its Dirichlet values from the parent)."""
        return self.parent.dirichlet_sizes

    def kind(self, name: str, value, batch: int | None = None):
        """The kind the parent reads (nodal values are given on the parent's DOFs)."""
        return self.parent.kind(name, value, batch=batch)

    def resolve(self, p, name, value):
        return self.parent.resolve(p, name, value)

    def collect(self, params, device, dtype, batch: int | None = None) -> Params:
        """The parent's :meth:`ParameterKinds.collect`, nodal values gathered onto the union."""
        p = self.parent.collect(params, device, dtype, batch)
        for k, v in p.items():
            if isinstance(v, torch.Tensor) and p.kinds.get(k) == "nodal":
                p[k] = v.index_select(-1, torch.as_tensor(self.index, device=v.device))
        return p

    def form_params(self, tb, params, B, device, dtype, t) -> FormParams:
        """The parent's :meth:`ParameterKinds.form_params` with nodal values of the union's length."""
        return self.parent.form_params(tb, params, B, device, dtype, t, n=self.n)


def batched_ndim(kind) -> int:
    """Dimensions of a parameter of ``kind`` that carries a leading batch axis."""
    return 3 if kind == "quadrature" else 1 if kind == "constant" else 2


def repeat_batch(v, B: int, reps: int, kind=None):
    """Repeat a parameter for ``reps`` levels of each of ``B`` samples (batch becomes B * reps)."""
    if not isinstance(v, torch.Tensor) or v.dim() == 0:
        return v
    if v.dim() < batched_ndim(kind):
        return v  # no batch: shared by every sample and level
    if v.shape[0] == 1:
        v = v.expand(B, *v.shape[1:])
    return v.repeat_interleave(reps, dim=0)
