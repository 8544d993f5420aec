"""Message passing on the graph of a finite-element mesh."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from femoe.errors import ShapeError
from femoe.nn.deeponet import FourierFeatures, mlp


def mesh_edges(element_dofs: np.ndarray) -> np.ndarray:
    """Directed edges ``(2, E)`` between DOFs that share an element (no self loops)."""
    ed = np.asarray(element_dofs)
    k = ed.shape[0]
    src = np.repeat(ed, k, axis=0).reshape(k, k, -1)
    dst = np.tile(ed, (k, 1)).reshape(k, k, -1)
    e = np.stack([src.reshape(-1), dst.reshape(-1)])
    e = e[:, e[0] != e[1]]
    return np.unique(e, axis=1)


class _Layer(nn.Module):
    def __init__(self, width: int, edge_dim: int):
        super().__init__()
        self.message = mlp([2 * width + edge_dim, width, width])
        self.update = mlp([2 * width, width, width])
        self.norm = nn.LayerNorm(width)

    def forward(self, h, src, dst, edge_attr, inv_deg):
        m = self.message(torch.cat([h[:, src], h[:, dst], edge_attr.expand(h.shape[0], -1, -1)], dim=-1))
        agg = torch.zeros_like(h).index_add(1, dst, m) * inv_deg
        return h + self.update(torch.cat([self.norm(h), agg], dim=-1))


class MeshGNN(nn.Module):
    """Encode-process-decode message passing on a fixed mesh graph.

    Node features are the Fourier features of the DOF coordinates and the input function at
    the node; edge features the coordinate differences. For time-dependent outputs the decoder
    is evaluated for each requested time, with the time appended to the node embedding.

    Parameters
    ----------
    coords
        DOF coordinates ``(n, dim)``.
    edges
        ``(2, E)`` directed edges (see :func:`mesh_edges`).
    in_channels
        Number of input-function channels per node.
    n_outputs
        ``N`` output fields per node (and time).
    period
        Box lengths ``(dim,)`` of a periodic mesh: edge vectors across the seam are wrapped to
        the short way round (otherwise they would span the whole box).
    """

    def __init__(self, coords: torch.Tensor, edges, in_channels: int = 1, n_outputs: int = 16, width: int = 64,
                 layers: int = 4, n_fourier: int = 16, time_bounds: tuple[float, float] | None = None,
                 period=None):
        super().__init__()
        coords = torch.as_tensor(coords, dtype=torch.float32)
        e = torch.as_tensor(np.asarray(edges), dtype=torch.long)
        lo, hi = coords.min(0).values, coords.max(0).values
        self.register_buffer("coords", coords)
        self.register_buffer("src", e[0])
        self.register_buffer("dst", e[1])
        scale = torch.clamp(hi - lo, min=1e-12)
        d = coords[e[1]] - coords[e[0]]
        if period is not None:  # a periodic mesh: the edge vector the short way round the seam
            L = torch.as_tensor(np.asarray(period, dtype=np.float32))
            d = d - L * torch.round(d / L)
            scale = L
        self.register_buffer("edge_attr", (d / scale).unsqueeze(0))
        deg = torch.zeros(coords.shape[0]).index_add(0, e[1], torch.ones(e.shape[1]))
        self.register_buffer("inv_deg", (1.0 / torch.clamp(deg, min=1.0)).reshape(1, -1, 1))
        self.features = FourierFeatures(coords.shape[1], n_fourier, 2.0, 0, lo.tolist(), hi.tolist())
        self.in_channels, self.n_outputs = in_channels, n_outputs
        self.encoder = mlp([self.features.out_dim + in_channels, width, width])
        self.layers = nn.ModuleList(_Layer(width, coords.shape[1]) for _ in range(layers))
        self.time_bounds = time_bounds
        self.decoder = mlp([width + (1 if time_bounds else 0), width, n_outputs])

    def forward(self, a: torch.Tensor, times: torch.Tensor | None = None) -> torch.Tensor:
        """``a``: (batch, n) or (batch, n, in_channels). Returns (batch, n, N), or with
        ``times`` (T,) given, (batch, T, n, N)."""
        if a.dim() == 2:
            a = a.unsqueeze(-1)
        n = self.coords.shape[0]
        if a.dim() != 3 or a.shape[1] != n or a.shape[2] != self.in_channels:
            raise ShapeError(f"MeshGNN input must have shape (batch, {n}) or (batch, {n}, {self.in_channels}); "
                             f"got {tuple(a.shape)}")
        x = self.features(self.coords.to(a)).expand(a.shape[0], -1, -1)
        h = self.encoder(torch.cat([x, a], dim=-1))
        for layer in self.layers:
            h = layer(h, self.src, self.dst, self.edge_attr.to(a), self.inv_deg.to(a))
        if times is None:
            if self.time_bounds:
                raise ShapeError("this MeshGNN was built for time-dependent output: pass times")
            return self.decoder(h)
        t0, t1 = self.time_bounds
        tt = ((times.to(a) - t0) / (t1 - t0)).reshape(1, -1, 1, 1).expand(a.shape[0], -1, n, 1)
        hh = h.unsqueeze(1).expand(-1, tt.shape[1], -1, -1)
        return self.decoder(torch.cat([hh, tt], dim=-1))
