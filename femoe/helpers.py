"""Form helpers that work in scikit-fem *and* in femoe's torch evaluation.

A weak form written with these helpers, ``def residual(u, v, w): return dot(grad(u), grad(v))``,
runs unchanged inside scikit-fem (numpy ``DiscreteField`` arguments; each helper then defers to
:mod:`skfem.helpers`) and inside femoe (torch :class:`~femoe.assembly.Field` arguments, so it is
differentiable and runs on any device). The names and index conventions are scikit-fem's:
component axes come first (``grad(u)`` of a scalar is ``(dim, ...)``, of a vector
``(ncomp, dim, ...)``) and the trailing axes broadcast.
"""

from __future__ import annotations

import numpy as np
import skfem.helpers as _sk
import torch

from femoe.assembly.fields import Field

__all__ = [
    "grad", "div", "curl", "sym_grad", "dot", "ddot", "mul", "prod", "trace",
    "transpose", "eye", "det", "inv", "exp", "log", "sqrt", "abs", "tanh", "sin", "cos",
]


def _is_torch(*xs) -> bool:
    return any(isinstance(x, (torch.Tensor, Field)) for x in xs)


def _val(x):
    return x.value if isinstance(x, Field) else x


def grad(u):
    """Gradient: ``u.grad``."""
    return u.grad


def div(u):
    """Divergence of a vector field (trace of its gradient)."""
    if isinstance(u, Field):
        g = u.grad
        if g.dim() >= 2 and g.shape[0] == g.shape[1]:
            return torch.diagonal(g, dim1=0, dim2=1).sum(-1)
        return g[0]
    return _sk.div(u)


def curl(u):
    """Curl: the rotated gradient of a 2D scalar, or the scalar curl of a 2D vector field."""
    if isinstance(u, Field):
        g = u.grad
        if g.shape[0] == 2 and g.dim() >= 2 and (g.dim() == 3 or g.shape[1] != 2):
            return torch.stack([g[1], -g[0]])
        if g.shape[0] == 2 and g.shape[1] == 2:
            return g[1, 0] - g[0, 1]
        return torch.stack([g[2, 1] - g[1, 2], g[0, 2] - g[2, 0], g[1, 0] - g[0, 1]])
    return _sk.curl(u)


def transpose(T):
    """Swap the first two (component) axes."""
    if _is_torch(T):
        return _val(T).transpose(0, 1)
    return _sk.transpose(T)


def sym_grad(u):
    """Symmetric gradient ``(grad u + grad u^T) / 2``."""
    if isinstance(u, Field):
        return 0.5 * (u.grad + u.grad.transpose(0, 1))
    return _sk.sym_grad(u)


def dot(u, v):
    """Contraction over the first axis: ``sum_i u_i v_i``."""
    if _is_torch(u, v):
        a, b = _val(u), _val(v)
        return (a * b).sum(0) if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) else np.einsum("i...,i...", a, b)
    return _sk.dot(u, v)


def ddot(A, B):
    """Double contraction over the first two axes: ``sum_ij A_ij B_ij``."""
    if _is_torch(A, B):
        return (_val(A) * _val(B)).sum((0, 1))
    return _sk.ddot(A, B)


def mul(A, x):
    """Matrix-vector (``A_ij x_j``) or matrix-matrix (``A_ij B_jk``) product on component axes."""
    if _is_torch(A, x):
        A, x = _val(A), _val(x)
        if x.dim() == A.dim() - 1:
            return (A * x.unsqueeze(0)).sum(1)
        return (A.unsqueeze(2) * x.unsqueeze(0)).sum(1)
    return _sk.mul(A, x)


def prod(u, v):
    """Outer product on the first axis: ``u_i v_j``."""
    if _is_torch(u, v):
        return _val(u).unsqueeze(1) * _val(v).unsqueeze(0)
    return _sk.prod(u, v)


def trace(T):
    """Trace over the first two axes."""
    if _is_torch(T):
        return torch.diagonal(_val(T), dim1=0, dim2=1).sum(-1)
    return _sk.trace(T)


def eye(w, size: int):
    """``size x size`` identity times ``w`` (scikit-fem's ``eye(w, size)``)."""
    if _is_torch(w):
        w = _val(w)
        I = torch.eye(size, dtype=w.dtype, device=w.device).reshape(size, size, *([1] * w.dim()))
        return I * w
    return _sk.eye(w, size)


def det(A):
    """Determinant of a 2x2 or 3x3 matrix field."""
    if _is_torch(A):
        return torch.linalg.det(torch.movedim(_val(A), (0, 1), (-2, -1)))
    return _sk.det(A)


def inv(A):
    """Inverse of a 2x2 or 3x3 matrix field."""
    if _is_torch(A):
        return torch.movedim(torch.linalg.inv(torch.movedim(_val(A), (0, 1), (-2, -1))), (-2, -1), (0, 1))
    return _sk.inv(A)


def _unary(name):
    tf, nf = getattr(torch, name), getattr(np, name)

    def f(x):
        return tf(_val(x)) if _is_torch(x) else nf(x)

    f.__name__ = name
    f.__doc__ = f"Elementwise ``{name}`` for numpy and torch fields."
    return f


exp, log, sqrt, abs, tanh, sin, cos = (_unary(n) for n in ("exp", "log", "sqrt", "abs", "tanh", "sin", "cos"))
