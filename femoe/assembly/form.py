"""Evaluation of a pointwise weak-form integrand in torch, with its exact linearisation.

An integrand ``f(u, v, w)`` (``f(u, p, v, q, w)`` for two-field spaces) is linear in the test
function. Evaluated on the unit test jets it gives coefficients ``c_a`` at every quadrature
point, and the local residual is ``r_i = sum_a sum_q c_a(q) phi_a,i(q) dx(q)``. The Jacobian
needs ``D_ab = d c_a / d ujet_b``, pointwise: because ``c_a`` at a point depends only on the
jet of ``u`` at that point, the gradient of ``sum(c_a)`` with respect to the jets is exactly
that derivative, one vector-Jacobian product per test jet. With ``create_graph`` the result
stays differentiable (second derivatives for Hessian-vector products and for gradients of the
Jacobian with respect to parameters).
"""

from __future__ import annotations

from typing import Callable

import torch

from femoe.assembly.fields import Field, FormParams
from femoe.assembly.torch_basis import TorchBasis, jet_tensors
from femoe.errors import ProblemError


def _call(integrand: Callable, tb: TorchBasis, ujets: torch.Tensor, w: FormParams,
          fields=None, vfields=None, n_test: int | None = None) -> torch.Tensor:
    """The coefficients ``(J_test, B, nel, nqp)`` of the integrand at the jets ``ujets``: on the
    trial fields ``fields`` (``tb.fields(ujets)`` when None) and the unit test fields ``vfields``
    of ``n_test`` test jets (every test jet's when None)."""
    vfields = tb.unit_test_fields(ujets.device, ujets.dtype) if vfields is None else vfields
    ufields = tb.fields(ujets) if fields is None else fields
    c = integrand(*ufields, *vfields, w)
    _, B, nel, nqp = ujets.shape
    J = tb.n_jets if n_test is None else n_test
    if not isinstance(c, torch.Tensor):
        raise ProblemError(
            f"integrand {getattr(integrand, '__name__', integrand)!r} returned {type(c).__name__}; "
            "it must return a torch tensor (one number per quadrature point)"
        )
    try:
        return torch.broadcast_to(c, (J, B, nel, nqp))
    except RuntimeError:
        raise ProblemError(
            f"integrand {getattr(integrand, '__name__', integrand)!r} returned shape {tuple(c.shape)}, "
            f"which does not reduce to one number per quadrature point (expected to broadcast to "
            f"{(J, B, nel, nqp)}); contract vector and tensor terms with dot()/ddot()"
        ) from None


_VALUE, _GRAD = Field.__dict__["value"], Field.__dict__["grad"]  # the slots' own descriptors


class _Recorded(Field):
    """A field that notes in ``seen`` which of its parts (``"value"``, ``"grad"``) an integrand
    reads, as ``(*tag, part)``; made like a :class:`Field` (``type(u)(value, grad)`` in a form)
    it notes nothing."""

    __slots__ = ("_seen", "_tag")

    def __init__(self, value: torch.Tensor, grad: torch.Tensor | None = None, seen: set | None = None, tag=()):
        _VALUE.__set__(self, value)
        _GRAD.__set__(self, grad)
        self._seen, self._tag = seen, tag

    @property
    def value(self):
        if self._seen is not None:
            self._seen.add((*self._tag, "value"))
        return _VALUE.__get__(self)

    @property
    def grad(self):
        if self._seen is not None:
            self._seen.add((*self._tag, "grad"))
        return _GRAD.__get__(self)


def _recorded(fields: list[Field], seen: set, side: str) -> list[_Recorded]:
    """``fields`` noting their reads in ``seen`` under ``(side, k)``, ``k`` the field's index."""
    return [_Recorded(_VALUE.__get__(f), _GRAD.__get__(f), seen, (side, k)) for k, f in enumerate(fields)]


def _jets_of(tb: TorchBasis, seen: set, side: str) -> tuple[int, ...]:
    """The jet indices of the parts of ``side``'s fields (``"trial"``, ``"test"``) in ``seen``."""
    out = []
    for k, lay in enumerate(tb.layouts):
        o = lay.offset
        if (side, k, "value") in seen:
            out += range(o, o + lay.n_value)
        if (side, k, "grad") in seen:
            out += range(o + lay.n_value, o + lay.size)
    return tuple(sorted(out))


def coefficients(integrand: Callable, tb: TorchBasis, ujets: torch.Tensor, w: FormParams):
    """``(c, test, trial)``: the coefficients ``c`` ``(len(test), B, nel, nqp)`` of the test jets
    ``test`` and the trial jets ``trial`` (tuples of jet indices) the integrand reads, which its
    local residual and Jacobian are assembled over.

    A test jet the integrand never reads has a zero coefficient (it is linear in the test
    function), and a trial jet it never reads a zero derivative: a mass or sorption term
    ``f(u) v`` reads neither ``grad u`` nor ``grad v``, so on a 1D P1 basis its Jacobian needs one
    of the four (value, gradient) pairs. The fields note what the integrand reads at every call.
    The first call evaluates every test jet, later ones the jets read so far; a call that reads a
    part outside them is evaluated again with every test jet and widens the record, so a form
    whose reads depend on the data is never truncated."""
    rec = tb.__dict__.setdefault("_reads", {})
    known = rec.get(id(integrand))
    test = None if known is None else known[1]
    while True:
        seen: set = set()
        fields = _recorded(tb.fields(ujets), seen, "trial")
        vfields = _recorded(tb.unit_test_fields(ujets.device, ujets.dtype, test), seen, "test")
        c = _call(integrand, tb, ujets, w, fields, vfields, None if test is None else len(test))
        read = _jets_of(tb, seen, "test")
        if test is None or set(read) <= set(test):
            break
        test = None  # a part outside the record was read: every test jet, once more
    if test is None:
        test = read or tuple(range(tb.n_jets))  # a form that reads no test jet keeps them all
        if len(test) < tb.n_jets:
            c = c[list(test)]
    _, known_test, known_trial = known or (None, (), ())
    trial = tuple(sorted(set(_jets_of(tb, seen, "trial")) | set(known_trial)))
    # the integrand is kept with its record, so its id is not reused
    rec[id(integrand)] = (integrand, tuple(sorted(set(test) | set(known_test))), trial)
    return c, test, trial


def check_linear_in_test(integrand: Callable, tb: TorchBasis, ujets: torch.Tensor, w: FormParams) -> None:
    """Raise :class:`ProblemError` if the integrand has a term that does not multiply ``v``."""
    vzero = [type(f)(f.value * 0, f.grad * 0) for f in tb.unit_test_fields(ujets.device, ujets.dtype)]
    with torch.no_grad():
        c = integrand(*tb.fields(ujets), *vzero, w)
    if isinstance(c, torch.Tensor) and torch.any(c != 0):
        raise ProblemError(
            f"integrand {getattr(integrand, '__name__', integrand)!r} is not linear in the test "
            "function: it is non-zero for v = 0. Multiply every term by v or grad(v) "
            "(a source term is written f * v)"
        )


# Autograd nodes of maps that are smooth wherever they are defined. For a composition of them,
# a derivative that does not depend on the jets (no graph back to them) means the map is affine.
# Non-smooth maps (clamp, abs, max, where, sign, ...) have piecewise-constant derivatives that
# autograd computes from masks, without a graph: they are not listed, so an integrand using them
# is never taken for affine. Unknown nodes count as non-smooth.
_SMOOTH_NODES = frozenset({
    "AccumulateGrad", "AddBackward0", "AddBackward1", "SubBackward0", "SubBackward1", "RsubBackward0",
    "RsubBackward1", "MulBackward0", "MulBackward1", "DivBackward0", "DivBackward1", "NegBackward0",
    "PowBackward0", "PowBackward1", "PowBackward2", "ExpBackward0", "LogBackward0", "SinBackward0",
    "CosBackward0", "TanhBackward0", "SqrtBackward0", "SumBackward0", "SumBackward1", "MeanBackward0",
    "MeanBackward1", "ExpandBackward0", "ViewBackward0", "ReshapeAliasBackward0", "UnsafeViewBackward0",
    "SliceBackward0", "SelectBackward0", "IndexBackward0", "UnsqueezeBackward0", "SqueezeBackward0",
    "SqueezeBackward1", "SqueezeBackward2", "PermuteBackward0", "TransposeBackward0", "CloneBackward0",
    "StackBackward0", "CatBackward0", "MmBackward0", "BmmBackward0", "MvBackward0", "DotBackward0",
    "ToCopyBackward0", "AsStridedBackward0", "AliasBackward0",
})


def _smooth_graph(fn, leaf: torch.Tensor) -> bool:
    """Whether every node of the autograd graph below ``fn`` is a smooth map (:data:`_SMOOTH_NODES`)
    and ``leaf`` its only leaf (no other tensor that requires a gradient, such as a learnable
    coefficient the integrand's closure holds, enters it)."""
    seen, stack = set(), [fn]
    while stack:
        f = stack.pop()
        if f is None or f in seen:
            continue
        if type(f).__name__ not in _SMOOTH_NODES:
            return False
        if type(f).__name__ == "AccumulateGrad" and f.variable is not leaf:
            return False
        seen.add(f)
        stack.extend(nxt for nxt, _ in f.next_functions)
    return True


#: what a form may read from ``w`` and still have a Jacobian fixed by the mesh: the geometry
GEOMETRY = frozenset({"x", "h", "n"})


class _ProbeParams(FormParams):
    """A copy of ``w`` that also records a form looking at all of it (``in``, iteration,
    ``keys()``, ``values()``, ``items()``): such a form may read any parameter."""


def _reads_everything(name: str):
    base = getattr(FormParams, name)

    def method(self, *args):
        self.read.add("*")
        return base(self, *args)

    return method


for _name in ("__contains__", "__iter__", "keys", "values", "items"):
    setattr(_ProbeParams, _name, _reads_everything(_name))


def affine_parts(integrand, tb: TorchBasis, ujets: torch.Tensor, w: FormParams,
                 parameters: frozenset | set = frozenset()) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(c(0), D)`` if the integrand is affine in ``u`` with a derivative fixed by the mesh, else
    ``None``: its coefficients at ``u = 0`` and their derivatives (:func:`jet_derivatives`), the
    same at every state, from which its local residual at ``u = 0`` and its local Jacobians are
    assembled once (:func:`local_from_coefficients`).

    It must read only the geometry from ``w`` (``x``, ``h``, ``n``, none of them shadowed by one
    of the call's ``parameters``; no time, and no look at all of ``w``). Its autograd graph must
    hold only smooth maps, and the derivative of its coefficients with respect to the jets must
    have no graph back to them, nor to any tensor that requires a gradient. Then, numerically, its
    coefficients at two further random states of both signs must be ``c(0) + D jets``; this
    catches what autograd cannot see, such as a mask ``(u > 0) * u`` or a detached factor.
    ``ujets``: ``(J, S, nel, nqp)``, the states ``w`` was made for. A tensor captured by the
    integrand's closure counts as fixed: integrands are pure functions of ``(u, v, w)``."""
    probe = _ProbeParams(w)  # its own record of what the integrand reads
    var = ujets.detach().requires_grad_(True)
    with torch.enable_grad():
        c = _call(integrand, tb, var, probe)
        if not probe.read <= GEOMETRY - set(parameters):
            return None
        if c.requires_grad and not _smooth_graph(c.grad_fn, var):
            return None
        D = jet_derivatives(c, var, create_graph=True)
        if D.requires_grad:  # the derivative depends on u (or on a tensor that needs a gradient)
            return None
    with torch.no_grad():
        c0 = _call(integrand, tb, torch.zeros_like(ujets), w)
        gen = torch.Generator(device=ujets.device).manual_seed(0)
        scale = ujets.detach().abs().amax().clamp_min(1.0)
        for trial in (torch.randn(ujets.shape, generator=gen, dtype=ujets.dtype, device=ujets.device) * scale,
                      ujets.detach()):
            for jets in (trial, -2.0 * trial + 0.5 * scale):
                c = _call(integrand, tb, jets, w)
                lin = c0 + (D * jets.unsqueeze(0)).sum(1)
                tol = 1e-9 * float(c.abs().amax() + lin.abs().amax() + c0.abs().amax()) + 1e-300
                if not bool(((c - lin).abs() <= tol).all()):
                    return None
    return c0, D


def is_affine(integrand, tb: TorchBasis, ujets: torch.Tensor, w: FormParams,
              parameters: frozenset | set = frozenset()) -> bool:
    """Whether :func:`affine_parts` finds the integrand affine with a mesh-fixed derivative."""
    return affine_parts(integrand, tb, ujets, w, parameters) is not None


def local_residual(integrand, tb: TorchBasis, ujets, w) -> torch.Tensor:
    """Local residual vectors ``(B, n_local, nel)``, over the test jets the integrand reads
    (:func:`coefficients`)."""
    c, test, trial = coefficients(integrand, tb, ujets, w)
    t = jet_tensors(tb.tensors(ujets.device, ujets.dtype), test, trial)
    return torch.einsum("jbeq,jieq->bie", c, t["phi_dx"])


def jet_derivatives(c: torch.Tensor, var: torch.Tensor, create_graph: bool,
                    keep: torch.Tensor | None = None) -> torch.Tensor:
    """``D[a, b] = d c_a / d ujet_b`` pointwise, ``(J_test, J_trial, B, nel, nqp)``, from the
    coefficients ``c`` evaluated at the jets ``var`` (which require a gradient): one
    vector-Jacobian product per test jet (zero where ``c_a`` does not depend on the jets); with
    the index ``keep`` only for those trial jets ``b`` (:func:`_jet_index`)."""
    rows = []
    for a in range(c.shape[0]):
        g = None
        if c.requires_grad:
            (g,) = torch.autograd.grad(c[a].sum(), var, retain_graph=True, create_graph=create_graph, allow_unused=True)
        g = torch.zeros_like(var) if g is None else g
        rows.append(g if keep is None else g.index_select(0, keep))
    return torch.stack(rows)


def local_from_coefficients(t: dict[str, torch.Tensor], c: torch.Tensor, D: torch.Tensor):
    """Local residuals ``(B, n_local, nel)`` and Jacobians ``(B, nel, n_local, n_local)`` from the
    coefficients ``c`` and their derivatives ``D`` (:func:`jet_derivatives`) on a basis' tensors."""
    r = torch.einsum("jbeq,jieq->bie", c, t["phi_dx"])
    return r, (jacobian_pair(t, D) if "phi_pair" in t else jacobian_batched(t, D))


def local_residual_and_jacobian(integrand, tb: TorchBasis, ujets, w, create_graph: bool):
    """Local residuals ``(B, n_local, nel)`` and local Jacobians ``(B, nel, n_local, n_local)``."""
    var = ujets if ujets.requires_grad else ujets.detach().requires_grad_(True)
    with torch.enable_grad():
        c, test, trial = coefficients(integrand, tb, var, w)
        D = jet_derivatives(c, var, create_graph, _jet_index(tb, trial, var.device))
    if not create_graph:
        D = D.detach()
        if not (ujets.requires_grad or any(isinstance(v, torch.Tensor) and v.requires_grad for v in w.values())):
            c = c.detach()
    return local_from_coefficients(jet_tensors(tb.tensors(ujets.device, ujets.dtype), test, trial), c, D)


def local_hessian(integrand, tb: TorchBasis, ujets: torch.Tensor, rho: torch.Tensor, w: FormParams):
    """Local Hessians ``(B, nel, n_local, n_local)`` of ``rho . r(u)``, the integrand's residual
    ``r`` at the jets ``ujets`` weighted by the DOF vectors ``rho`` ``(B, n)``; None when the
    integrand does not depend on ``u`` or is linear in it.

    The integrand is linear in its test function, so ``rho . r = sum_q psi(q)`` with ``psi`` the
    integrand on the test field ``rho`` (its jets times the quadrature weights). ``psi`` at a point
    depends only on the jets of ``u`` there, so its second derivatives ``D2[b, c]`` with respect
    to them are pointwise: a gradient with a graph, then :func:`jet_derivatives` of it over the
    trial jets the integrand reads. Then ``H[j, k] = sum_q sum_bc phi[b, j] D2[b, c] phi[c, k]``,
    the local Jacobian's contraction with ``phi`` in place of ``phi_dx``. Not differentiable."""
    var = ujets.detach().requires_grad_(True)
    seen: set = set()
    with torch.enable_grad():
        psi = integrand(*_recorded(tb.fields(var), seen, "trial"), *tb.fields(tb.jets(rho, weighted=True)), w)
        if not (isinstance(psi, torch.Tensor) and psi.requires_grad):
            return None
        (g,) = torch.autograd.grad(psi.sum(), var, create_graph=True, allow_unused=True)
        if g is None or not g.requires_grad:  # no u in it (a parameter needing a gradient), or linear in u
            return None
        trial = _jets_of(tb, seen, "trial")
        if not trial:
            return None
        keep = _jet_index(tb, trial, var.device)
        D2 = jet_derivatives(g if keep is None else g.index_select(0, keep), var, False, keep)
    return jacobian_batched(_hessian_tensors(tb.tensors(ujets.device, ujets.dtype), trial), D2.detach())


def _jet_index(tb: TorchBasis, jets: tuple[int, ...], device) -> torch.Tensor | None:
    """``jets`` as an index tensor on ``device`` (cached on the basis); None when they are every jet."""
    if len(jets) == tb.n_jets:
        return None
    cache = tb.__dict__.setdefault("_jet_index", {})
    key = (jets, str(device))
    if key not in cache:
        cache[key] = torch.as_tensor(jets, dtype=torch.long, device=device)
    return cache[key]


def _hessian_tensors(t: dict[str, torch.Tensor], trial: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The tensors :func:`jacobian_batched` contracts a local Hessian with: ``phi`` of the jets
    ``trial`` on both sides (``phi_dx_eqia``'s layout filled from ``phi``). Cached in ``t``."""
    key = ("hessian", trial)
    if key not in t:
        jt = jet_tensors(t, trial, trial)
        t[key] = {"phi": jt["phi"], "phi_e_qb_j": jt["phi_e_qb_j"],
                  "phi_dx_eqia": jt["phi"].permute(2, 3, 1, 0).contiguous()}
    return t[key]


# The local Jacobians K[s, e, i, j] = sum_q sum_ab phi_dx[a, i, e, q] D[a, b, s, e, q] phi[b, j, e, q]
# from the pointwise derivatives D (J_test, J_trial, states, elements, points) and a basis'
# tensors t (TorchBasis.tensors), returned as (states, elements, n_local, n_local).

def jacobian_pair(t: dict[str, torch.Tensor], D: torch.Tensor) -> torch.Tensor:
    """One batched matmul over the elements with the pair tensor ``t["phi_pair"]``
    (:func:`femoe.assembly.torch_basis.pair_tensor`): ``(s, (q a b)) x ((q a b), (i j))``."""
    Ja, Jb, S, E, Q = D.shape
    n = t["phi"].shape[1]
    Dp = D.permute(3, 2, 4, 0, 1).reshape(E, S, Q * Ja * Jb)
    return torch.bmm(Dp, t["phi_pair"]).reshape(E, S, n, n).transpose(0, 1)


def jacobian_batched(t: dict[str, torch.Tensor], D: torch.Tensor) -> torch.Tensor:
    """Two batched matmuls, without the pair tensor (bases whose pair tensor would exceed
    ``PAIR_MAX_ENTRIES``). A batched matmul costs per matrix, so each is batched over as few as
    possible, with the states inside each product (``benchmarks/bench_local_jacobian.py``):
    ``X[(e q), i, (s b)] = sum_a phi_dx[(e q), i, a] D[(e q), a, (s b)]``, then
    ``K[e, (s i), j] = sum_(q b) X[e, (s i), (q b)] phi[e, (q b), j]``."""
    Ja, Jb, S, E, Q = D.shape
    n = t["phi"].shape[1]
    Dq = D.permute(3, 4, 0, 2, 1).reshape(E * Q, Ja, S * Jb)
    X = torch.bmm(t["phi_dx_eqia"].reshape(E * Q, n, Ja), Dq)  # ((e q), i, (s b))
    X = X.reshape(E, Q, n, S, Jb).permute(0, 3, 2, 1, 4).reshape(E, S * n, Q * Jb)
    return torch.bmm(X, t["phi_e_qb_j"]).reshape(E, S, n, n).transpose(0, 1)
