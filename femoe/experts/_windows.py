"""Temporal experts: a trajectory's levels cut into time windows, one constraint per window.

A basis-mode constraint on a whole trajectory fits one weight vector ``w`` to every level's
rows. With ``W`` windows, window ``j`` (levels ``a_j .. a_{j+1}``) has its own layer (PI-HC, or
the spatial experts of PI-HC-MoE: spatio-temporal experts) and its own weights, fitted to its
own levels' rows with the initial state ``u(a_j)`` taken from the previous window's last level
(the problem's initial condition for the first window). The windows are marched in order, so
the output is continuous in time up to the initial rows' least-squares residual, and ``W``
windows give the basis ``W`` times the freedom: a late window is not tied to the weights that
fit the early levels, which is what extrapolation in time needs. Gradients reach the basis of
every window and, through each window's initial state, the windows before it (every layer is
differentiable with respect to its initial condition).

With ``state_column=True`` each window's basis gets one more column, its initial state held at
every level of the window: ``B_j = [B(levels of j), u(a_j) 1]``. The span then always holds the
persistent field ``u(t) = u(a_j)``, so the window's initial rows can be met exactly and the
network's columns only have to span the change over the window. In extrapolation (a window past
the times the network was trained on) the network's columns are extrapolated too and are the
poorer part of the span; the state column is not: it is the field the windows before computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from femoe.errors import ConfigError, ShapeError


def window_edges(n_steps: int, windows: int) -> np.ndarray:
    """First and last levels of ``windows`` windows of about equal length over ``n_steps`` steps:
    ``(windows + 1,)`` increasing integers from 0 to ``n_steps``."""
    if not 1 <= windows <= n_steps:
        raise ConfigError(f"time windows must be between 1 and the number of steps ({n_steps}); got {windows}")
    return np.linspace(0, n_steps, windows + 1).round().astype(np.int64)


@dataclass(frozen=True)
class WindowsInfo:
    """What a time-window forward did: the windows' own info records (``windows``), their
    level ranges (``edges``: window ``j`` covers levels ``edges[j][0] .. edges[j][1]``), their
    initial states (``starts``: ``u0``, then each previous window's last level) and, per sample,
    whether every window converged and the iterations summed over windows (the most any expert
    of a window took)."""

    windows: tuple
    edges: tuple
    starts: tuple
    converged: torch.Tensor
    iterations: torch.Tensor

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


class TimeWindows(nn.Module):
    """One constraint layer per time window, marched in order (see the module docstring).

    Parameters
    ----------
    make_layer : callable
        ``make_layer(t0) -> layer``: a trajectory layer (``layer(B, params, u0) -> (u, info)``
        with ``B`` of shape ``(batch, L, n, N)``, ``u`` ``(batch, L, n)`` and ``info.converged``,
        ``info.iterations`` per sample, or per sample and expert) whose first level is at time
        ``t0``.
    n_steps : int
        Steps of the whole trajectory (its levels are ``0 .. n_steps``).
    dt : float
        The step (window ``j`` starts at ``t0 + edges[j] dt``).
    windows : int
        Number of windows (1: one layer over the whole trajectory).
    t0 : float
        Time of level 0.
    state_column : bool
        Append each window's initial state as one more basis column, the same at every level of
        the window (see the module docstring); each layer then sees ``N + 1`` columns.
    """

    def __init__(self, make_layer: Callable[[float], nn.Module], n_steps: int, dt: float, windows: int,
                 t0: float = 0.0, state_column: bool = False):
        super().__init__()
        self.edges = window_edges(int(n_steps), int(windows))
        self.dt, self.t0 = float(dt), float(t0)
        self.state_column = bool(state_column)
        self.layers = nn.ModuleList([make_layer(self.t0 + int(a) * self.dt) for a in self.edges[:-1]])

    def extra_repr(self) -> str:
        return f"windows={len(self.layers)}, edges={self.edges.tolist()}, state_column={self.state_column}"

    def spans(self, n_levels: int) -> list[tuple[int, int, nn.Module]]:
        """``(first, last, layer)`` of the windows that a trajectory of ``n_levels`` levels
        (``<= n_steps + 1``: shorter when training stops early) reaches, the last one cut."""
        out = []
        for a, b, layer in zip(self.edges[:-1], self.edges[1:], self.layers):
            if a >= n_levels - 1:
                break
            out.append((int(a), int(min(b, n_levels - 1)), layer))
        return out

    def window_basis(self, B: torch.Tensor, a: int, b: int, start: torch.Tensor) -> torch.Tensor:
        """The basis window ``(a, b)`` solves on: ``B[:, a:b + 1]``, with its initial state ``start``
        ``(batch, n)`` appended as a column held over the window when ``state_column``."""
        Bj = B[:, a:b + 1]
        if not self.state_column:
            return Bj
        return torch.cat([Bj, start.to(Bj.dtype)[:, None, :, None].expand(-1, b + 1 - a, -1, 1)], -1)

    def forward(self, B: torch.Tensor, params: Mapping[str, Any] | None = None,
                u0: torch.Tensor | None = None) -> tuple[torch.Tensor, WindowsInfo]:
        """``B`` ``(batch, L, n, N)`` with ``L <= n_steps + 1`` levels -> ``u`` ``(batch, L, n)``:
        window ``j``'s field on its levels (its first level is the previous window's last)."""
        if B.dim() != 4:
            raise ShapeError(f"time windows need a trajectory basis (batch, levels, n, N); got {tuple(B.shape)}")
        L = B.shape[1]
        if not 2 <= L <= int(self.edges[-1]) + 1:
            raise ShapeError(f"the basis has {L} levels; the windows cover {int(self.edges[-1]) + 1}")
        if u0 is None:
            raise ConfigError("time windows need the initial condition u0")
        if self.state_column and u0.shape != (B.shape[0], B.shape[2]):
            raise ShapeError(f"a state column needs u0 of shape (batch, n) = {(B.shape[0], B.shape[2])}; "
                             f"got {tuple(u0.shape)}")
        pieces, infos, edges, starts = [], [], [], []
        start = u0
        for a, b, layer in self.spans(L):
            u, info = layer(self.window_basis(B, a, b, start), params, start)
            pieces.append(u if a == 0 else u[:, 1:])
            infos.append(info)
            edges.append((a, b))
            starts.append(start)
            start = u[:, -1]
        batch = B.shape[0]
        conv = torch.stack([i.converged.reshape(batch, -1).all(1) for i in infos], 1).all(1)
        its = torch.stack([i.iterations.reshape(batch, -1).max(1).values for i in infos], 1).sum(1)
        return torch.cat(pieces, 1), WindowsInfo(tuple(infos), tuple(edges), tuple(starts), conv, its)
