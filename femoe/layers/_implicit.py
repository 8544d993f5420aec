"""One implicit-differentiation primitive for every solve in femoe.

Every differentiable solve here returns a root ``x*(theta)`` of an optimality condition

    F(x*, theta) = 0

whose inputs ``theta`` are tensors (the basis ``B``, coefficient fields, an initial state, ...):

- Newton (:func:`femoe.layers.nonlinear_solve`, patch mode): ``F(u, p) = R(u; p)``, the
  residual itself; ``x = u``.
- Levenberg-Marquardt (:class:`femoe.layers.HardConstraint`, the experts): ``F(w; B, p) =
  J_w^T r(B w; p) + rho w``, the gradient of ``f = 1/2 ||r(B w)||^2 + rho/2 ||w||^2``; ``x = w``.

Differentiating ``F(x*(theta), theta) = 0`` gives ``A dx* + (dF/dtheta) dtheta = 0`` with
``A = dF/dx`` at the root (Newton: the Jacobian ``J``; LM: the Hessian ``H`` of ``f``, symmetric),
so ``dx*/dtheta = -A^{-1} dF/dtheta`` and, for a loss ``L`` with ``g = dL/dx*``,

    dL/dtheta = -(dF/dtheta)^T v,    A^T v = g.

The backward is therefore one *adjoint solve* ``A^T v = g`` (reusing what the forward solve
factorised or assembled) and one vector-Jacobian product of ``F`` with ``-v`` (autograd through
``F`` at the fixed root, or a problem's own closed form). Nothing of the forward's iterations is
differentiated: the gradient is exact at the root and independent of the initial guess, the
number of iterations and the line search. :class:`ImplicitProblem` states what a solve supplies,
:func:`implicit_root` is the autograd node.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import torch
from torch.autograd.function import once_differentiable


class ImplicitProblem(ABC):
    """A root ``x*(theta)`` of ``F(x, theta) = 0`` and its adjoint (see the module docstring).

    Subclasses implement the abstract :meth:`solve`, :meth:`optimality` and :meth:`adjoint` (a
    subclass without them cannot be instantiated); :meth:`vjp` is optional (``None``: autograd
    through :meth:`optimality`). One instance serves one call of :func:`implicit_root`, so
    :meth:`solve` may keep what the backward reuses (a factorisation, the Gauss-Newton matrix)
    on ``self``.
    """

    @abstractmethod
    def solve(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The root ``x*`` for the inputs (run without gradients)."""

    @abstractmethod
    def optimality(self, x: torch.Tensor, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``F(x, theta)``, differentiable in the inputs (``x`` held fixed)."""

    @abstractmethod
    def adjoint(self, x: torch.Tensor, inputs: Sequence[torch.Tensor], g: torch.Tensor,
                needs: Sequence[bool]) -> torch.Tensor:
        """``v`` with ``(dF/dx)^T v = g`` at the root ``x`` (``needs``: which inputs want a gradient)."""

    def vjp(self, x: torch.Tensor, inputs: Sequence[torch.Tensor], v: torch.Tensor,
            needs: Sequence[bool]) -> list[torch.Tensor | None] | None:
        """``dL/dtheta = -(dF/dtheta)^T v`` per input (``None`` where not needed), or ``None`` to
        let autograd differentiate :meth:`optimality`."""
        return None


class _ImplicitRoot(torch.autograd.Function):
    @staticmethod
    def forward(ctx, problem: ImplicitProblem, *inputs: torch.Tensor):
        x = problem.solve(tuple(t.detach() for t in inputs))
        ctx.problem = problem
        ctx.save_for_backward(x, *inputs)
        return x

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, *inputs = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        if not any(needs):
            return (None, *[None] * len(inputs))
        problem = ctx.problem
        v = problem.adjoint(x, inputs, g.contiguous(), needs)
        grads = problem.vjp(x, inputs, v, needs)
        if grads is None:
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(nd) for t, nd in zip(inputs, needs)]
                F = problem.optimality(x.detach(), leaves)
                wrt = [leaf for leaf, nd in zip(leaves, needs) if nd]
                it = iter(torch.autograd.grad(F, wrt, grad_outputs=-v, allow_unused=True))
                grads = [next(it) if nd else None for nd in needs]
        out = [torch.zeros_like(t) if (gr is None and nd) else (gr if nd else None)
               for gr, t, nd in zip(grads, inputs, needs)]
        return (None, *out)


def implicit_root(problem: ImplicitProblem, *inputs: torch.Tensor) -> torch.Tensor:
    """``x*`` = ``problem.solve(inputs)``, differentiable in ``inputs`` by the implicit function
    theorem: one ``problem.adjoint`` solve and one vector-Jacobian product in the backward."""
    return _ImplicitRoot.apply(problem, *inputs)
