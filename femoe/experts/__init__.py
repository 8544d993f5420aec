"""Mixture of experts: the mesh cut into element patches, one constraint solve per patch.

- :class:`HardConstraintMoE` (basis mode, PI-HC-MoE): one Levenberg-Marquardt problem per
  expert on its owned rows, all experts in one batched solve.
- :class:`PatchConstraint` (patch mode): exact local conservation; each expert solves the weak
  form on its patch interior with the network's values on the interface.
- :mod:`femoe.experts.distributed`: experts spread over ``torchrun`` processes.
"""

from femoe.experts._basis import HardConstraintMoE, MoEInfo
from femoe.experts._patch import PatchConstraint, PatchInfo

__all__ = ["HardConstraintMoE", "MoEInfo", "PatchConstraint", "PatchInfo"]
