"""DeepONet-style operator network for basis fields on arbitrary point sets."""

from __future__ import annotations

import math

import torch
from torch import nn

from femoe.errors import ShapeError


def mlp(sizes: list[int], activation: type[nn.Module] = nn.GELU, last_activation: bool = False) -> nn.Sequential:
    """A plain multilayer perceptron ``sizes[0] -> ... -> sizes[-1]``."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2 or last_activation:
            layers.append(activation())
    return nn.Sequential(*layers)


class FourierFeatures(nn.Module):
    """Random Fourier features ``[x, sin(2 pi x F), cos(2 pi x F)]`` of coordinates.

    Coordinates are first mapped to ``[0, 1]`` with the given ``lower``/``upper`` bounds, so
    features are independent of the physical scale (seconds vs metres).
    """

    def __init__(self, in_dim: int, n_features: int = 32, scale: float = 4.0, seed: int = 0,
                 lower=None, upper=None):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("F", torch.randn(in_dim, n_features, generator=g) * scale)
        self.register_buffer("lower", torch.as_tensor(lower if lower is not None else [0.0] * in_dim, dtype=torch.float32))
        self.register_buffer("upper", torch.as_tensor(upper if upper is not None else [1.0] * in_dim, dtype=torch.float32))
        self.out_dim = in_dim + 2 * n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.lower.to(x), self.upper.to(x)
        z = (x - lo) / torch.clamp(hi - lo, min=1e-12)
        proj = 2 * math.pi * z @ self.F.to(x)
        return torch.cat([z, torch.sin(proj), torch.cos(proj)], dim=-1)


class DeepONet(nn.Module):
    """``out[b, y, k] = sum_j branch(a_b)[j, k] * trunk(y)[j] + bias[k]``.

    Parameters
    ----------
    n_sensors
        Length of the input-function vector ``a`` (its values at fixed sensor points).
    coord_dim
        Dimension of the evaluation points (space, or space + time).
    n_outputs
        ``N``: number of output fields (basis functions for the hard-constraint layer, 1 for a
        single field).
    width, depth
        Hidden width and number of hidden layers of both sub-networks.
    lower, upper
        Bounds of the coordinates (for the Fourier features).
    """

    def __init__(self, n_sensors: int, coord_dim: int, n_outputs: int = 16, width: int = 64, depth: int = 3,
                 n_fourier: int = 32, fourier_scale: float = 4.0, lower=None, upper=None, seed: int = 0):
        super().__init__()
        self.n_sensors, self.coord_dim, self.n_outputs, self.width = n_sensors, coord_dim, n_outputs, width
        self.features = FourierFeatures(coord_dim, n_fourier, fourier_scale, seed, lower, upper)
        self.trunk = mlp([self.features.out_dim] + [width] * depth, last_activation=True)
        self.branch = mlp([n_sensors] + [width] * (depth - 1) + [width * n_outputs])
        self.bias = nn.Parameter(torch.zeros(n_outputs))

    def forward(self, a: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """``a``: (batch, n_sensors); ``points``: (n_points, coord_dim). Returns (batch, n_points, N)."""
        if a.dim() != 2 or a.shape[-1] != self.n_sensors:
            raise ShapeError(f"DeepONet input a must have shape (batch, {self.n_sensors}); got {tuple(a.shape)}")
        if points.dim() != 2 or points.shape[-1] != self.coord_dim:
            raise ShapeError(f"DeepONet points must have shape (n_points, {self.coord_dim}); got {tuple(points.shape)}")
        t = self.trunk(self.features(points))  # (P, width)
        b = self.branch(a).reshape(a.shape[0], self.width, self.n_outputs)  # (B, width, N)
        return torch.einsum("pw,bwn->bpn", t, b) / math.sqrt(self.width) + self.bias
