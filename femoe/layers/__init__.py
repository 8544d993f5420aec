"""Constraint layers: differentiable solves that sit inside a network's forward pass.

- :func:`nonlinear_solve`, :func:`nonlinear_step`, :func:`solve_trajectory`: ``R(u*; p) = 0`` by
  batched Newton, gradients by one adjoint solve (implicit function theorem).
- :class:`HardConstraint` (PI-HC): ``u = B w*``, ``w* = argmin 1/2 ||r(B w)||^2 + rho/2 ||w||^2``
  by Levenberg-Marquardt, gradients by the implicit function theorem with the exact Hessian;
  :func:`least_squares_solve` is its functional core over a residual model
  (:class:`SteadyResidual`, :class:`TrajectoryResidual`: rows ``O`` and DOFs ``L``), batched over
  samples (and over experts, for the mixture of experts).
- :func:`soft_residual_loss`, :func:`soft_trajectory_loss`: the soft-constraint baseline.
"""

from femoe.layers._hard import HardConstraint
from femoe.layers._lm import Backward, Hessian, LeastSquaresInfo, LMOptions, Unconverged, least_squares_solve
from femoe.layers._newton import NewtonSolveInfo, nonlinear_solve, nonlinear_step, solve_trajectory
from femoe.layers._residuals import (BlockEnergyRows, EnergyRows, RowTransform, SampleEnergyRows, SteadyResidual,
                                     TrajectoryResidual, energy_factor, energy_matrix)
from femoe.layers._soft import soft_residual_loss, soft_trajectory_loss

__all__ = [
    "Backward",
    "BlockEnergyRows",
    "EnergyRows",
    "HardConstraint",
    "Hessian",
    "LMOptions",
    "LeastSquaresInfo",
    "NewtonSolveInfo",
    "RowTransform",
    "SampleEnergyRows",
    "SteadyResidual",
    "TrajectoryResidual",
    "Unconverged",
    "energy_factor",
    "energy_matrix",
    "least_squares_solve",
    "nonlinear_solve",
    "nonlinear_step",
    "soft_residual_loss",
    "soft_trajectory_loss",
    "solve_trajectory",
]
