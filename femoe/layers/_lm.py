"""Batched regularised nonlinear least squares in the weights of a basis, with an implicit backward.

``w* = argmin_w f(w),  f(w) = 1/2 ||r(B w; p)||^2 + rho/2 ||w||^2``,  solved for every batch
element at once by Levenberg-Marquardt on the ``N x N`` normal equations. The residual ``r``
comes from a residual model (:mod:`femoe.layers._residuals`), so the same core serves one
expert (PI-HC) and a batch of (sample, expert) pairs (PI-HC-MoE).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from femoe.errors import ConfigError, ProblemError
from femoe.layers._implicit import ImplicitProblem, implicit_root
from femoe.layers._residuals import ResidualModel, basis_field
from femoe.layers._validate import join_params, split_params

log = logging.getLogger(__name__)


class _Choice(str, enum.Enum):
    @classmethod
    def parse(cls, value: Any, argument: str):
        try:
            return cls(value)
        except ValueError:
            raise ConfigError(f"Unknown {argument} {value!r}. Pick one of {[c.value for c in cls]}") from None


class Hessian(_Choice):
    """Hessian used by the implicit backward.

    ``exact``: ``J_w^T J_w + sum_i r_i d2r_i/dw2 + rho I`` (the second term by Hessian-vector
    products through the residual); ``gauss_newton``: without the second term -- exact for
    linear problems and cheaper, an approximation otherwise.
    """

    EXACT = "exact"
    GAUSS_NEWTON = "gauss_newton"


class Backward(_Choice):
    """How gradients reach ``B`` and the parameters.

    ``implicit``: the implicit function theorem at ``grad_w f = 0`` (default);
    ``unrolled``: autograd through every LM iteration -- a reference for tests and benchmarks
    only (memory grows with the iterations, and the gradient is exact only in the limit).
    """

    IMPLICIT = "implicit"
    UNROLLED = "unrolled"


@dataclass(frozen=True)
class LeastSquaresInfo:
    """What one batched Levenberg-Marquardt solve did, per batch element.

    A batch element is a sample (PI-HC) or a (sample, expert) pair (PI-HC-MoE). An element stops
    when it converges or stalls; it is then frozen, and the batch stops when every element has
    stopped (or at ``maxiter``).

    Attributes
    ----------
    converged : torch.Tensor
        ``(B,)`` bool: ``||grad_w f(w*)|| <= target`` -- the optimality condition the implicit
        backward assumes.
    iterations : torch.Tensor
        ``(B,)`` int64 LM iterations (accepted and rejected steps) until the element stopped.
    residual_norms : torch.Tensor
        ``(B,)`` ``||r(B w*)||_2`` of the enforced rows (IC rows included, weighted).
    gradient_norms : torch.Tensor
        ``(B,)`` ``||grad_w f(w*)||_2``, ``grad_w f = J_w^T r + rho w``.
    initial_gradient_norms : torch.Tensor
        ``(B,)`` ``||grad_w f(0)||_2``, the scale of the relative tolerance.
    objective : torch.Tensor
        ``(B,)`` ``f(w*)``.
    damping : torch.Tensor
        ``(B,)`` final LM damping ``mu``.
    target : torch.Tensor
        ``(B,)`` the threshold the element met or missed: ``max(atol, tol ||grad_w f(0)||)``, or
        the round-off floor ``eps ||J_w||_F (||J_w||_F ||w|| + ||r(0)|| + ||r||)`` of the
        computed gradient at this element's own scale (``eps`` of the dtype) where the element
        converged on it: below the floor and no longer improving for 2 iterations. ``||r(0)||``
        also counts the size of the field's own terms in the rows
        (:meth:`ResidualModel.row_magnitude`, where a model gives it), which round off at their
        size where the rows nearly cancel, and, for rows about a fixed field
        (:meth:`ResidualModel.zero_field_rows`), the rows at the zero field.
    stalled : torch.Tensor
        ``(B,)`` bool: stopped without converging because neither ``f`` (relative decrease
        ``1e-8``) nor ``||grad_w f||`` (by 10 %) improved in ``patience`` iterations, or the
        damping overflowed -- typically a kink of the residual (e.g. ``max(u, 0)``) or a floor
        underestimated by the round-off estimate.
    weight_error : torch.Tensor
        ``(B,)`` ``||(J_w^T J_w + rho I)^{-1} grad_w f(w*)|| / ||w*||``: first-order estimate of
        the relative distance of ``w*`` from the exact optimum. The implicit backward linearises
        at ``w*``, so gradients carry relative errors of about this size (times the conditioning
        of the map from the basis to ``w``); ``<~ 1e-8`` in float64 means the gradient can be
        trusted.
    adjoint_residual : torch.Tensor
        ``(B,)`` relative residual ``||H v - gbar|| / ||gbar||`` of the adjoint solve ``H v = gbar``
        of the implicit backward (``H`` the Hessian used). NaN until a backward pass has run;
        filled in place by it (the last backward through this solve).
    """

    converged: torch.Tensor
    iterations: torch.Tensor
    residual_norms: torch.Tensor
    gradient_norms: torch.Tensor
    initial_gradient_norms: torch.Tensor
    objective: torch.Tensor
    damping: torch.Tensor
    target: torch.Tensor | None = None
    stalled: torch.Tensor | None = None
    weight_error: torch.Tensor | None = None
    adjoint_residual: torch.Tensor | None = None

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def relative_gradient(self) -> torch.Tensor:
        """``||grad_w f(w*)|| / ||grad_w f(0)||`` (0 where the initial gradient vanishes)."""
        g0 = self.initial_gradient_norms
        return torch.where(g0 > 0, self.gradient_norms / g0.clamp_min(torch.finfo(g0.dtype).tiny),
                           torch.zeros_like(g0))


class Unconverged(_Choice):
    """What the constraint layers do with batch elements that did not converge.

    ``flag`` (default): use the result, flag it in ``info.converged`` and warn once per layer
    (the gradient is the implicit one at the point reached; ``info.weight_error`` says how far
    to trust it). ``exclude``: use the result in the forward value but give those samples no
    gradient (their output is detached; in the mixture of experts a sample is excluded when any
    of its experts did not converge). ``raise``: raise :class:`~femoe.errors.ConvergenceError`
    (what ``strict=True`` selects).
    """

    FLAG = "flag"
    EXCLUDE = "exclude"
    RAISE = "raise"


@dataclass(frozen=True)
class LMOptions:
    """Levenberg-Marquardt settings (see :func:`least_squares_solve`).

    Stopping: an element converges when ``||grad_w f|| <= max(atol, tol ||grad_w f(0)||)`` (for
    rows about a fixed field, such as two-level experts' corrections, the larger of that and the
    gradient about the zero field: :meth:`ResidualModel.zero_field_rows`), or
    when it is below the round-off floor of the gradient at its own scale and no longer
    improving (see :class:`LeastSquaresInfo`); it stalls (not converged) when it makes no
    progress for ``patience`` iterations. ``tol=None`` means 1e-10 in float64 and 1e-5 in
    float32.
    """

    def relative_tolerance(self, dtype: torch.dtype) -> float:
        if self.tol is not None:
            return float(self.tol)
        return 1e-10 if dtype == torch.float64 else 1e-5

    rho: float = 1e-4
    tol: float | None = None
    atol: float = 0.0
    maxiter: int = 100
    damping: float = 1e-6
    hessian: Hessian = Hessian.EXACT
    hvp_chunk: int | None = None
    patience: int = 20

    def __post_init__(self):
        if not self.rho >= 0:
            raise ConfigError(f"rho must be >= 0; got {self.rho}")
        if not ((self.tol is None or self.tol >= 0) and self.atol >= 0):
            raise ConfigError(f"tol and atol must be >= 0; got {self.tol}, {self.atol}")
        if int(self.maxiter) < 1:
            raise ConfigError(f"maxiter must be a positive integer; got {self.maxiter}")
        if not self.damping > 0:
            raise ConfigError(f"damping must be positive; got {self.damping}")
        if self.hvp_chunk is not None and int(self.hvp_chunk) < 1:
            raise ConfigError(f"hvp_chunk must be a positive integer or None; got {self.hvp_chunk}")
        if int(self.patience) < 1:
            raise ConfigError(f"patience must be a positive integer; got {self.patience}")
        object.__setattr__(self, "hessian", Hessian.parse(self.hessian, "hessian"))


def _normal_solve(A: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``A^{-1} g`` for SPD ``(B, N, N)`` A (Cholesky, LU where it fails)."""
    L, status = torch.linalg.cholesky_ex(A)
    if bool((status == 0).all()):
        return torch.cholesky_solve(g.unsqueeze(-1), L).squeeze(-1)
    return torch.linalg.solve(A, g)


def _rows_times(r: torch.Tensor, J: torch.Tensor) -> torch.Tensor:
    """``J^T r`` per element, ``(B, m)`` rows and ``(B, m, N)`` Jacobian -> ``(B, N)``, as
    ``r^T J``: it reads ``J`` along its rows (0.57 against 2.74 ms for ``J^T @ r`` at 4 x 6,579 x 64
    on a CPU: ``benchmarks/bench_step_parts.py``, ``step_parts.json``)."""
    return (r.unsqueeze(1) @ J).squeeze(1)


def _roundoff_floor(A: torch.Tensor, w: torch.Tensor, r: torch.Tensor, r0norm: torch.Tensor,
                    rho: float) -> torch.Tensor:
    """Round-off level of ``g = J^T r + rho w`` for each element's own scale.

    The rows are sums of terms of about the size of the field's contribution ``|J w|`` and of
    the data ``|r(0)|``, so the computed ``r`` carries an error of about
    ``eps (||J|| ||w|| + ||r(0)|| + ||r||)`` and ``g`` that error times ``||J||``.
    ``||J||_F^2 = trace(J^T J)``, read off the normal matrix ``A = J^T J``.
    """
    eps = torch.finfo(w.dtype).eps
    jn = torch.diagonal(A.detach(), dim1=1, dim2=2).sum(1).clamp_min(0).sqrt()
    wn = torch.linalg.vector_norm(w.detach(), dim=1)
    rn = torch.linalg.vector_norm(r.detach(), dim=1)
    return eps * (jn * (jn * wn + r0norm + rn) + rho * wn)


def _require_residual_model(model, who: str) -> None:
    """Refuse, before any solve, a model that is not a :class:`ResidualModel` (the contract the
    least-squares core reads its optional hooks and defaults from)."""
    if not isinstance(model, ResidualModel):
        raise ProblemError(f"{who} needs a femoe.layers.ResidualModel (residual, linearize and the optional hooks); "
                           f"got {type(model).__name__}: subclass ResidualModel")


def _lm(model, B: torch.Tensor, p: Mapping[str, Any], o: LMOptions):
    """The LM iterations; differentiable when run with grad enabled (unrolled backward).

    Nielsen's damping update: ``(J^T J + rho I + mu I) d = -g``; gain ratio
    ``(f(w) - f(w + d)) / (1/2 d^T (mu d - g))``; accept if positive and then
    ``mu *= max(1/3, 1 - (2 gain - 1)^3)``, else ``mu *= nu, nu *= 2``. Where the predicted
    reduction is below the round-off of ``f``, a step is accepted if it reduces ``||grad_w f||``.

    Every element stops on its own (converged, or stalled: see :class:`LeastSquaresInfo`) and is
    then frozen; the loop ends when none is active.
    """
    batch, N = B.shape[0], B.shape[-1]
    eye = torch.eye(N, dtype=B.dtype, device=B.device)
    w = B.new_zeros(batch, N)
    model.forget()  # reuse within this solve only: the parameters may have changed since the last

    def evaluate(w, B=B, p=p, old=None):
        # J_w is needed only here: the loop keeps the N x N normal matrix, not the (rows x N)
        # Jacobian (whose Frobenius norm the round-off floor reads off A's trace)
        u = basis_field(B, w)
        r, J = model.linearize(u, B, p)
        f = 0.5 * (r * r).sum(1) + 0.5 * o.rho * (w * w).sum(1)
        if old is None:
            g = _rows_times(r, J) + o.rho * w
            A = J.transpose(1, 2) @ J
        else:  # the normal equations of the active elements only (`old`: theirs, the others' kept)
            act, g, A = old
            Ja, ra = J.index_select(0, act), r.index_select(0, act)
            g = g.index_copy(0, act, _rows_times(ra, Ja) + o.rho * w.index_select(0, act))
            A = A.index_copy(0, act, Ja.transpose(1, 2) @ Ja)
        # the size of the field's terms in the rows, the scale of their round-off (0: not known)
        mag = model.row_magnitude(u, p)
        m = r.new_zeros(r.shape[0]) if mag is None else torch.linalg.vector_norm(mag.detach(), dim=1)
        return r, f, g, A, m

    # Stopped elements are frozen: their trial values are discarded. Without a graph to keep
    # (the implicit backward), a trial evaluates only the samples with an active element (a
    # sample's elements: one sample, or its K folded experts, come from one evaluation), and
    # the others keep their values: the tail of one slow element costs one sample's evaluation.
    # Within the evaluated samples only the active elements form their normal equations.
    per = int(model.elements_per_sample)
    n_samples = batch // per if batch % per == 0 else 0
    sliced = model.sample_params(p, n_samples) if n_samples > 1 and not torch.is_grad_enabled() else None
    offsets = torch.arange(per, device=B.device)
    subset: dict = {}  # the last subset's samples, elements, basis and parameters

    def trial(w, active, r, f, g, A, m):
        if sliced is None:
            return evaluate(w)
        samples = active.reshape(n_samples, per).any(1).nonzero().squeeze(1)
        if samples.numel() == n_samples:
            return evaluate(w, old=_only_active(active, None, g, A))
        if not ("samples" in subset and torch.equal(subset["samples"], samples)):
            # the same subset is kept for the next trials (the tail of a slow sample): its basis and
            # parameters are the same tensors, so a model's caches of what it makes of B hold
            e = (samples[:, None] * per + offsets).reshape(-1)
            subset.update(samples=samples, e=e, B=B.index_select(0, e),
                          p={k: (v.index_select(0, samples) if k in sliced else v) for k, v in p.items()})
        e = subset["e"]
        rs, fs, gs, As, ms = evaluate(w.index_select(0, e), subset["B"], subset["p"],
                                      old=_only_active(active, e, g, A))
        return (r.index_copy(0, e, rs), f.index_copy(0, e, fs), g.index_copy(0, e, gs), A.index_copy(0, e, As),
                m.index_copy(0, e, ms))

    def _only_active(active, e, g, A):
        """``(active positions, g, A)`` within the evaluated elements ``e`` (all when None) for
        :func:`evaluate` to form only the active elements' normal equations (a sample's inactive
        elements are evaluated with it, and their trial values are discarded); None when every
        evaluated element is active."""
        if e is not None:
            active, g, A = active.index_select(0, e), g.index_select(0, e), A.index_select(0, e)
        if bool(active.all()):
            return None
        return active.nonzero().squeeze(1), g, A

    r, f, g, A, m = evaluate(w)
    gnorm = torch.linalg.vector_norm(g, dim=1)
    g0 = gnorm.detach().clone()
    r0 = torch.linalg.vector_norm(r.detach(), dim=1)
    scale0 = g0  # of the relative tolerance
    zero = model.zero_field_rows(B, p)
    if zero is not None:  # rows about a fixed field c: the rows at u = 0 set the scales, not those at w = 0
        with torch.no_grad():
            rz, Jz = zero
            r0 = r0 + torch.linalg.vector_norm(r.detach() - rz, dim=1) + torch.linalg.vector_norm(rz, dim=1)
            scale0 = torch.maximum(g0, torch.linalg.vector_norm(_rows_times(rz, Jz), dim=1))
    target = torch.clamp(o.relative_tolerance(B.dtype) * scale0, min=o.atol)
    # the field's terms round off at their own size, which the rows do not show where they nearly
    # cancel (a stiffness row sums terms ~1/h^2 larger than itself): the floor counts them (m)
    floor = _roundoff_floor(A, w, r, r0 + m, o.rho)
    scale = torch.diagonal(A, dim1=1, dim2=2).detach().amax(1).clamp_min(max(o.rho, 1e-30))
    mu, mu_max = o.damping * scale, 1e16 * scale
    nu = torch.full_like(mu, 2.0)
    iterations = torch.zeros(batch, dtype=torch.int64, device=B.device)
    stalled = torch.zeros(batch, dtype=torch.bool, device=B.device)
    # progress anchors of the stall test: the objective and gradient norm when progress was last made
    anchor_f, anchor_g = f.detach().clone(), g0.clone()
    since = torch.zeros(batch, dtype=torch.int64, device=B.device)
    converged = gnorm.detach() <= target
    for _ in range(o.maxiter):
        active = ~converged & ~stalled
        if not bool(active.any()):
            break
        d = -_normal_solve(A + (o.rho + mu)[:, None, None] * eye, g)
        d = torch.where(active[:, None], d, torch.zeros_like(d))
        r_t, f_t, g_t, A_t, m_t = trial(w + d, active, r, f, g, A, m)
        pred = 0.5 * (d * (mu[:, None] * d - g)).sum(1).detach()
        gain = (f - f_t).detach() / torch.where(pred > 0, pred, torch.ones_like(pred))
        # Near the optimum f(w) - f(w + d) drops below the round-off of f and the gain ratio is
        # noise; there a step is accepted when it reduces the gradient norm instead.
        below_roundoff = pred <= 64 * torch.finfo(f.dtype).eps * f.detach().abs()
        decreases = torch.linalg.vector_norm(g_t.detach(), dim=1) < gnorm.detach()
        accept = active & torch.isfinite(f_t.detach()) & (((pred > 0) & (gain > 0)) | (below_roundoff & decreases))
        a1 = accept[:, None]
        w = torch.where(a1, w + d, w)
        r = torch.where(a1, r_t, r)
        f = torch.where(accept, f_t, f)
        g = torch.where(a1, g_t, g)
        A = torch.where(a1[:, :, None], A_t, A)
        m = torch.where(accept, m_t, m)
        gnorm = torch.linalg.vector_norm(g, dim=1)
        shrink = torch.clamp(1 - (2 * gain.clamp(0, 1) - 1) ** 3, min=1.0 / 3.0)
        mu = torch.where(accept, mu * shrink, torch.where(active, mu * nu, mu))
        nu = torch.where(accept, torch.full_like(nu, 2.0), torch.where(active, nu * 2, nu))
        iterations += active.to(torch.int64)
        floor = torch.where(accept, _roundoff_floor(A, w, r, r0 + m, o.rho), floor)
        # progress: since the last progress, f decreased by 1e-8 relative or ||g|| by 10 % (the
        # anchors only decrease, so an oscillating gradient at a kink does not count twice; a
        # Gauss-Newton iteration converging linearly, as on large-residual rows, counts)
        fd, gd = f.detach(), gnorm.detach()
        progress = (fd < anchor_f - 1e-8 * anchor_f.abs()) | (gd < 0.9 * anchor_g)
        anchor_f = torch.where(progress, fd, anchor_f)
        anchor_g = torch.where(progress, gd, anchor_g)
        since = torch.where(progress | ~active, torch.zeros_like(since), since + 1)
        # converged: below the relative target, or at the round-off floor and no longer improving
        # (the LM goes as far as it can before the floor is invoked: it may overestimate the noise)
        converged = converged | (active & ((gd <= target) | ((gd <= floor) & (since >= 2))))
        stalled = stalled | (active & ~converged & ((since >= o.patience) | (mu > mu_max)))
    with torch.no_grad():
        # first-order distance of w from the optimum, relative to |w| (Gauss-Newton Hessian)
        Ad = A.detach()
        tiny = torch.finfo(w.dtype).eps * torch.diagonal(Ad, dim1=1, dim2=2).amax(1).clamp_min(1e-300)
        step = _normal_solve(Ad + (o.rho + tiny)[:, None, None] * eye, g.detach())
        wn = torch.linalg.vector_norm(w.detach(), dim=1)
        werr = torch.linalg.vector_norm(step, dim=1) / wn.clamp_min(torch.finfo(w.dtype).tiny)
        werr = torch.where(torch.isfinite(werr), werr, torch.full_like(werr, float("inf")))
    info = LeastSquaresInfo(
        converged=converged,
        iterations=iterations,
        residual_norms=torch.linalg.vector_norm(r.detach(), dim=1),
        gradient_norms=gnorm.detach(),
        initial_gradient_norms=g0,
        objective=f.detach(),
        damping=mu,
        target=torch.where(converged & (gnorm.detach() > target), floor, target),
        stalled=stalled,  # set only for elements not converged, which are then frozen
        weight_error=werr,
        adjoint_residual=torch.full_like(g0, float("nan")),
    )
    return w, A, r, info


def _hessian(gw: torch.Tensor, w: torch.Tensor, chunk: int | None) -> torch.Tensor:
    """``(B, N, N)`` Hessian rows ``d gw / dw`` by batched Hessian-vector products."""
    batch, N = w.shape
    chunk = N if chunk is None else int(chunk)
    eye = torch.eye(N, dtype=w.dtype, device=w.device)
    rows = []
    for start in range(0, N, chunk):
        E = eye[start:start + chunk, None, :].expand(-1, batch, -1)
        (H,) = torch.autograd.grad(gw, w, E, retain_graph=True, is_grads_batched=True)
        rows.append(H)
    return torch.cat(rows, dim=0).transpose(0, 1)


@torch.no_grad()
def _adjoint_residual(out: torch.Tensor, H: torch.Tensor, v: torch.Tensor, gbar: torch.Tensor) -> None:
    """Write ``||H v - gbar|| / ||gbar||`` per element into ``out`` (0 where ``gbar = 0``)."""
    gn = torch.linalg.vector_norm(gbar, dim=1)
    res = torch.linalg.vector_norm((H @ v.unsqueeze(-1)).squeeze(-1) - gbar, dim=1)
    out.copy_(torch.where(gn > 0, res / gn.clamp_min(1e-300), torch.zeros_like(gn)))


class LeastSquaresRoot(ImplicitProblem):
    """The LM weights as an :class:`ImplicitProblem` over the inputs ``(B, *parameter tensors)``.

    At the optimum the gradient vanishes: ``G(w*, theta) = grad_w f(w*; B, p) = 0`` with
    ``G = J_w^T r + rho w``, ``J_w = dr/dw = (dr/du) B``. The adjoint matrix is the exact Hessian
    ``H = dG/dw = J_w^T J_w + sum_i r_i d2 r_i / dw2 + rho I`` (symmetric), so the backward solves
    ``H v = gbar`` (one ``N x N`` system per batch element) and takes ``-(dG/dtheta)^T v``, a
    vector-Jacobian product of ``G`` (itself autograd of ``f``: a double backward through the
    residual). ``J_w^T J_w`` is kept from the forward; the second term is ``B^T [d2/du2 (r* . r)] B``,
    whose ``n x n`` middle factor has the Jacobian's sparsity and is recovered by a few coloured
    Hessian-vector products (:meth:`ResidualModel.curvature`; a model without it falls back to
    ``N`` Hessian-vector products in ``w``). It vanishes for linear problems, where
    ``hessian="gauss_newton"`` skips it. When only ``B`` needs a gradient (training) a model's
    :meth:`ResidualModel.basis_adjoint` gives that term and ``(dG/dB)^T v`` from one linearisation,
    without the double backward. The relative residual ``||H v - gbar|| / ||gbar||`` of the adjoint
    solve goes into ``info.adjoint_residual`` (the backward's own accuracy; the distance of ``w*``
    from the optimum is ``info.weight_error``).
    """

    def __init__(self, model: ResidualModel, opts: LMOptions, names, static, info_out: list):
        _require_residual_model(model, "LeastSquaresRoot")
        self.model, self.opts, self.names, self.static, self.info_out = model, opts, names, static, info_out
        self._vjp = None

    def _p(self, inputs) -> dict:
        return join_params(self.names, list(inputs[1:]), self.static)

    def solve(self, inputs):
        w, self.A_gn, self.r_star, info = _lm(self.model, inputs[0], self._p(inputs), self.opts)
        self.info_out.append(info)
        self.info = info
        return w

    def _gradient(self, w, inputs):
        """``G(w; B, p)`` with its graph (in ``w`` and the inputs)."""
        wl = w.detach().requires_grad_(True)
        r = self.model.residual(basis_field(inputs[0], wl), self._p(inputs))
        f = 0.5 * (r * r).sum() + 0.5 * self.opts.rho * (wl * wl).sum()
        (G,) = torch.autograd.grad(f, wl, create_graph=True)
        return G, wl

    def optimality(self, w, inputs):
        return self._gradient(w, inputs)[0]

    def adjoint(self, w, inputs, g, needs):
        o, model = self.opts, self.model
        B, p = inputs[0], self._p(inputs)
        H = self.A_gn + o.rho * torch.eye(w.shape[1], dtype=w.dtype, device=w.device)  # Gauss-Newton
        if o.hessian is Hessian.EXACT:
            adjoint = model.basis_adjoint(w, B, p, self.r_star) if needs[0] and not any(needs[1:]) else None
            curvature = None if adjoint is not None else model.curvature(basis_field(B, w), B, p, self.r_star)
            if adjoint is not None:  # only B needs a gradient: no double backward
                S, self._vjp = adjoint
                H = H + S
            elif curvature is not None:
                H = H + curvature
            else:  # no structured curvature: the whole Hessian by N Hessian-vector products in w
                with torch.enable_grad():
                    H = _hessian(*self._gradient(w, inputs), o.hvp_chunk)
        v = torch.linalg.solve(H, g)
        _adjoint_residual(self.info.adjoint_residual, H, v, g)
        return v

    def vjp(self, w, inputs, v, needs):
        if self._vjp is None:
            return None
        return [self._vjp(v)] + [None] * (len(inputs) - 1)


def least_squares_solve(
    model,
    B: torch.Tensor,
    params: Mapping[str, Any] | None = None,
    options: LMOptions | None = None,
    backward: Backward | str = Backward.IMPLICIT,
) -> tuple[torch.Tensor, LeastSquaresInfo]:
    """Solve ``min_w 1/2 ||r(B w)||^2 + rho/2 ||w||^2`` for a batch; the functional core of
    :class:`HardConstraint` (no input validation, no warnings).

    Parameters
    ----------
    model : ResidualModel
        The rows (:class:`SteadyResidual`, :class:`TrajectoryResidual`, the experts' folded model,
        or any :class:`ResidualModel`).
    B : torch.Tensor
        ``(batch, n_L, N)`` or ``(batch, T + 1, n_L, N)`` basis fields.
    params : mapping, optional
        Parameters of the residual; tensors receive gradients.
    options : LMOptions, optional
    backward : ``"implicit"`` or ``"unrolled"``
        See :class:`Backward`.

    Returns
    -------
    w : torch.Tensor
        ``(batch, N)`` weights.
    info : LeastSquaresInfo
    """
    _require_residual_model(model, "least_squares_solve")
    o = options or LMOptions()
    mode = Backward.parse(backward, "backward")
    B = B.contiguous()  # every LM iteration reads B: a strided one would be copied each time
    params = dict(params or {})
    if mode is Backward.UNROLLED:
        w, _, _, info = _lm(model, B, params, o)
        return w, info
    names, tensors, static = split_params(params)
    info_out: list[LeastSquaresInfo] = []
    w = implicit_root(LeastSquaresRoot(model, o, names, static, info_out), B, *tensors)
    return w, info_out[0]
