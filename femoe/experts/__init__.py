"""Mixture of experts: the mesh cut into element patches, one constraint solve per patch.

- :class:`HardConstraintMoE` (basis mode, PI-HC-MoE): one Levenberg-Marquardt problem per
  expert on its owned rows, all experts in one batched solve.
- :class:`PatchConstraint` (patch mode): exact local conservation; each expert solves the weak
  form on its patch interior with the network's values on the interface.
- :class:`TimeWindows` (temporal experts): a trajectory cut into time windows, one constraint
  layer per window (PI-HC-MoE's spatial experts in each: spatio-temporal experts), marched in
  order.
- :mod:`femoe.experts.distributed`: experts spread over ``torchrun`` processes.
"""

from femoe.experts._basis import HardConstraintMoE, MoEInfo
from femoe.experts._patch import PatchConstraint, PatchInfo
from femoe.experts._windows import TimeWindows, WindowsInfo, window_edges

__all__ = ["HardConstraintMoE", "MoEInfo", "PatchConstraint", "PatchInfo", "TimeWindows", "WindowsInfo", "window_edges"]
