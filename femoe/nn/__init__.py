"""Reference networks: mesh-agnostic neural operators in plain torch.

Any network works with femoe's constraint layers as long as it returns basis fields
``(batch, n_points, N)`` (basis mode) or a field ``(batch, n_points)`` (soft and patch modes);
these are the defaults the trainer builds.

- :class:`DeepONet`: a branch network on the sampled input function (initial condition or
  coefficient field) and a trunk network on coordinates (space or space-time), combined into
  ``N`` output fields. Evaluates at any set of points, so it is mesh-agnostic.
- :class:`MeshGNN`: message passing on the mesh graph (DOFs joined when they share an element),
  with the input function and coordinates as node features.
"""

from femoe.nn.deeponet import DeepONet, FourierFeatures, mlp
from femoe.nn.gnn import MeshGNN, mesh_edges

__all__ = ["DeepONet", "FourierFeatures", "MeshGNN", "mesh_edges", "mlp"]
