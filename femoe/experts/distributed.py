"""Experts across processes with ``torch.distributed`` (launched by ``torchrun``).

Every rank runs the same network on the same batch; each rank solves a static share of the
experts (:class:`~femoe.experts.HardConstraintMoE` with ``distributed=True``) and the stitched
field is the sum of the ranks' parts (each DOF has one owner expert, so exactly one rank
contributes it). In backward every rank receives the full ``dL/du`` and sends it through its own
experts only, so each rank's network gradient holds its experts' share: :func:`sync_gradients`
sums them. Loss terms that do not pass through the layer are counted once per rank; divide them
by the world size (or add them on one rank).

A rank that dies makes ``torchrun`` stop the others; a rank stuck in a collective whose peer
vanished raises after ``timeout_s`` (gloo and NCCL honour the process-group timeout), so a run
never hangs silently.

    torchrun --nproc-per-node 2 examples/ex03_torchrun_experts.py
"""

from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist

from femoe.errors import DistributedError

log = logging.getLogger(__name__)


def default_backend() -> str:
    """``"nccl"`` when CUDA is available and each local rank (``LOCAL_WORLD_SIZE`` of them) can
    have a device of its own, else ``"gloo"``."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if torch.cuda.is_available() and torch.cuda.device_count() >= local_world:
        return "nccl"
    return "gloo"


def init(backend: str | None = None, timeout_s: float = 120.0) -> tuple[int, int]:
    """Initialise the default process group from ``torchrun``'s environment.

    ``backend`` defaults to :func:`default_backend`: NCCL when every local rank has a GPU of
    its own, gloo otherwise (NCCL refuses two ranks on one device, so ``torchrun
    --nproc-per-node 2`` on a one-GPU machine runs on gloo). Returns
    ``(rank, world_size)``. Without ``torchrun`` (no ``RANK`` in the environment) this is a
    single-process run: nothing is initialised and ``(0, 1)`` is returned.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ:
        return 0, 1
    backend = backend or default_backend()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl" and local_rank >= torch.cuda.device_count():
        raise DistributedError(f"backend 'nccl' needs one GPU per rank on a machine, but LOCAL_RANK={local_rank} and "
                               f"only {torch.cuda.device_count()} CUDA device(s) are visible (NCCL refuses two ranks on "
                               "one device); launch at most that many processes per node or use backend='gloo'")
    try:
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as exc:  # pragma: no cover - depends on the launch environment
        raise DistributedError(f"could not initialise torch.distributed with backend {backend!r}: {exc}. "
                               "Launch with torchrun, and use backend='gloo' on CPUs") from exc
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    log.info("torch.distributed: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return dist.get_rank(), dist.get_world_size()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce(x: torch.Tensor, op) -> torch.Tensor:
    try:
        dist.all_reduce(x, op=op)
    except Exception as exc:
        raise DistributedError(f"rank {dist.get_rank()}: all_reduce failed ({exc}); another rank probably "
                               "stopped (see its log)") from exc
    return x


class _AllReduceSum(torch.autograd.Function):
    # y = sum_r x_r on every rank. The loss is evaluated identically on every rank, so each rank
    # already holds the full dL/dy, and dL/dx_r = dL/dy: backward is the identity. The ranks'
    # partial network gradients are summed afterwards by sync_gradients.
    @staticmethod
    def forward(ctx, x):
        return _all_reduce(x.detach().clone(), dist.ReduceOp.SUM)

    @staticmethod
    def backward(ctx, grad):
        return grad


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (identity in a single process), differentiable as described above."""
    return _AllReduceSum.apply(x) if _active() else x


@torch.no_grad()
def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over ranks (not differentiable)."""
    return _all_reduce(x.clone(), dist.ReduceOp.MAX) if _active() else x


def sync_gradients(params) -> None:
    """Sum gradients over ranks (call after ``backward``, before the step).

    ``params`` is a module (its ``parameters()``) or an iterable of tensors: leaf tensors that
    are not module parameters (a learnable coefficient passed in ``params``, a learnable ``u0``,
    a basis ``B`` held as a leaf) get only their rank's share of the gradient too, and are
    summed only when listed here. List each tensor once (a module's parameters and the module
    would be summed twice), and let every rank list the same tensors in the same order with the
    same gradients present (one flat all-reduce matches them by position).
    """
    if not _active():
        return
    tensors = params.parameters() if isinstance(params, torch.nn.Module) else params
    grads = [p.grad for p in tensors if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    _all_reduce(flat, dist.ReduceOp.SUM)
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].reshape(g.shape))
        offset += g.numel()


def shutdown() -> None:
    """Destroy the process group if one was initialised."""
    if dist.is_initialized():
        dist.destroy_process_group()
