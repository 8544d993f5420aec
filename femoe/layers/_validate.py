"""Checks at the public boundary of the layers: finite values, shapes, parameter splitting."""

from __future__ import annotations

import logging
import warnings
from typing import Any, Mapping

import numpy as np
import torch

from femoe.errors import (ConfigError, ConvergenceError, ConvergenceWarning, NonFiniteError, PartitionError,
                           ShapeError)


def check_finite(name: str, x: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``name`` and the first NaN/Inf index of ``x``."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        return
    # fast path: a finite sum means every entry is finite (no temporaries of x's size); a
    # non-finite sum may still be an overflow of finite entries, which the entrywise test decides
    if x.numel() and bool(torch.isfinite(x.detach().sum())):
        return
    bad = ~torch.isfinite(x.detach())
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        value = float(x.detach()[idx]) if idx else float(x.detach())
        raise NonFiniteError(
            f"{name} contains non-finite values: first at index {idx} (value {value}); "
            f"{int(bad.sum())} of {x.numel()} entries are NaN or Inf. Check the network output "
            "(learning rate, normalisation) before the constraint layer"
        )


def check_params_finite(params: Mapping[str, Any] | None, prefix: str = "params") -> None:
    """:func:`check_finite` on every tensor of a parameter dict."""
    for k, v in (params or {}).items():
        if isinstance(v, torch.Tensor):
            check_finite(f"{prefix}[{k!r}]", v)


def check_float_tensor(name: str, x: Any) -> torch.Tensor:
    """``x`` must be a float32/float64 tensor."""
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch.Tensor; got {type(x).__name__}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ShapeError(f"{name} must be float32 or float64; got {x.dtype}")
    return x


def check_initial(u0: Any, n: int, batch: int, dtype: torch.dtype) -> torch.Tensor:
    """Validate an initial condition for a basis of batch ``batch``: ``(n,)``, ``(1, n)`` or
    ``(batch, n)`` values in the basis' dtype, finite. Returns it as ``(1 or batch, n)``.

    A flat vector of another length (e.g. ``(2 n,)`` for two samples) is refused rather than
    reshaped, which would silently reinterpret it as a batch."""
    check_float_tensor("u0", u0)
    ok = (u0.dim() == 1 and u0.shape[0] == n) or (u0.dim() == 2 and u0.shape[1] == n and u0.shape[0] in (1, batch))
    if not ok:
        hint = ""
        if u0.dim() == 1 and u0.numel() % n == 0 and u0.numel() > n:
            hint = f"; to pass {u0.numel() // n} samples, reshape it to ({u0.numel() // n}, {n})"
        raise ShapeError(f"u0 must have shape ({batch}, {n}), (1, {n}) or ({n},) (the basis has batch {batch} and the "
                         f"problem {n} DOFs); received {tuple(u0.shape)}{hint}")
    check_finite("u0", u0)
    if u0.dtype != dtype:
        raise ShapeError(f"u0 must have the dtype of the basis ({dtype}); received {u0.dtype}")
    return u0.reshape(-1, n)


def check_experts(experts: Any) -> int:
    """A number of experts: a positive integer (not a bool, not a float with a fraction)."""
    ok = isinstance(experts, (int, np.integer)) and not isinstance(experts, bool) and int(experts) >= 1
    if not ok:
        raise ConfigError(f"experts must be a positive integer or a femoe ExpertPartition; got {experts!r}")
    return int(experts)


def check_partition(part: Any, problem: Any):
    """An :class:`~femoe.partition.ExpertPartition` given to a layer must belong to the layer's
    problem: same DOF and element counts and the DOF ownership its element partition gives on
    this problem's basis. Returns it rebuilt with the problem's Dirichlet DOFs (same elements and
    owners), so the Dirichlet set the partition was built with does not matter.

    Raises
    ------
    PartitionError
        The partition was built for another mesh or basis (the message names both sizes).
    """
    from femoe.partition import ExpertPartition

    if not isinstance(part, ExpertPartition):
        raise PartitionError(f"experts must be a number of experts or a femoe ExpertPartition; "
                             f"got {type(part).__name__}")
    n, ne = int(problem.n), int(problem.mesh.nelements)
    fix = ("build it for this problem with femoe.partition.partition_experts(problem.basis, K, method, "
           "dirichlet=problem.dirichlet_dofs) or ExpertPartition.from_basis(problem.basis, element_part)")
    if part.owner.shape != (n,) or part.element_part.shape != (ne,):
        raise PartitionError(f"the partition covers {part.owner.size} DOFs and {part.element_part.size} elements but "
                             f"problem {problem.name!r} has {n} DOFs and {ne} elements: it was built for another "
                             f"mesh or basis; {fix}")
    rebuilt = ExpertPartition.from_basis(problem.basis, part.element_part, problem.dirichlet_dofs)
    if not np.array_equal(rebuilt.owner, part.owner):
        bad = int((rebuilt.owner != part.owner).sum())
        raise PartitionError(f"the partition has the sizes of problem {problem.name!r} but {bad} of its {n} DOF owners "
                             f"differ from what its element partition gives on this problem's basis: it was built for "
                             f"another mesh or basis of the same size; {fix}")
    return rebuilt


def expert_partition(experts: Any, problem: Any, method: str, seed: int):
    """The partition of an expert layer: ``experts`` checked against ``problem`` when it is an
    :class:`~femoe.partition.ExpertPartition` (:func:`check_partition`), else a number of
    experts (:func:`check_experts`) partitioned with ``method`` and ``seed``."""
    from femoe.partition import ExpertPartition, partition_experts

    if isinstance(experts, ExpertPartition):
        return check_partition(experts, problem)
    return partition_experts(problem.basis, check_experts(experts), method, dirichlet=problem.dirichlet_dofs,
                             seed=seed)


def split_params(params: Mapping[str, Any] | None) -> tuple[list[str], list[torch.Tensor], dict[str, Any]]:
    """Split a parameter dict into tensor names, tensors, and the other (static) entries.

    The tensors become inputs of an autograd Function (so gradients reach them); the static
    entries (numbers, callables) are passed through unchanged. The caller's dict is not modified.
    """
    names, tensors, static = [], [], {}
    for k, v in (params or {}).items():
        if isinstance(v, torch.Tensor):
            names.append(k)
            tensors.append(v)
        else:
            static[k] = v
    return names, tensors, static


def join_params(names: list[str], tensors, static: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`split_params`."""
    out = dict(static)
    out.update(zip(names, tensors))
    return out


def as_index(name: str, idx: Any, size: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """A 1-D int64 index tensor into ``range(size)`` (``None`` stays ``None``)."""
    if idx is None:
        return None
    t = torch.as_tensor(idx, device=device)
    if t.dtype == torch.bool:
        if t.shape != (size,):
            raise ShapeError(f"{name} as a boolean mask must have shape ({size},); got {tuple(t.shape)}")
        t = t.nonzero().flatten()
    if t.dim() != 1 or t.dtype not in (torch.int32, torch.int64):
        raise ShapeError(f"{name} must be a 1-D integer index tensor; got shape {tuple(t.shape)}, dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= size):
        raise ShapeError(f"{name} must index into range({size}); got values in [{int(t.min())}, {int(t.max())}]")
    return t


#: what to try when a least-squares solve (basis mode) does not converge
LM_REMEDY = ("Raise maxiter, loosen tol, or check the basis (rank, scaling) and the residual's smoothness (a stall "
             "is often a kink such as max(u, 0))")
#: what to try when a Newton solve (patch mode, nonlinear_solve) does not converge
NEWTON_REMEDY = "Raise maxiter, improve the initial guess (the network's field), or loosen atol/rtol"


def report_unconverged(layer: Any, message: str, info: Any, remedy: str = LM_REMEDY) -> None:
    """The convergence policy of every constraint layer (PI-HC, PI-HC-MoE, patch mode): raise
    :class:`ConvergenceError` when ``layer.unconverged == "raise"`` (what ``strict=True``
    selects), else log every time and warn once per layer (``layer._warned``); ``"exclude"``
    additionally detaches the unconverged samples (the layer does that). ``message`` says what
    did not converge; the policy and the ``remedy`` are appended here."""
    message = f"{message}; policy unconverged={layer.unconverged.value!r}. {remedy}"
    if layer.unconverged.value == "raise":  # strict=True selects it (parse_unconverged)
        raise ConvergenceError(message, info=info)
    logging.getLogger(type(layer).__module__).info(message)
    if not layer._warned:
        layer._warned = True
        warnings.warn(message + " (warned once per layer; see info.converged)", ConvergenceWarning, stacklevel=4)


def parse_unconverged(unconverged: Any, strict: bool):
    """The unconverged policy of a layer (:class:`~femoe.layers.Unconverged`); ``strict=True``
    means ``"raise"`` and cannot be combined with another explicit choice."""
    from femoe.layers._lm import Unconverged

    policy = Unconverged.parse(unconverged, "unconverged")
    if strict and policy is Unconverged.EXCLUDE:
        raise ConfigError("strict=True raises on unconverged solves; it cannot be combined with "
                          "unconverged='exclude' (pick one)")
    return Unconverged.RAISE if strict else policy


def exclude_unconverged(u: torch.Tensor, converged: torch.Tensor) -> torch.Tensor:
    """``u`` with the samples whose ``converged`` row (``(batch,)`` or ``(batch, K)``) is not all
    true detached: they keep their value and give no gradient (``unconverged="exclude"``)."""
    ok = converged.reshape(converged.shape[0], -1).all(1)
    if bool(ok.all()) or not u.requires_grad:
        return u
    mask = ok.reshape(-1, *([1] * (u.dim() - 1))).to(u.device)
    return torch.where(mask, u, u.detach())
