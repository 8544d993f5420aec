"""Constraint layers: differentiable solves that sit inside a network's forward pass.

- :func:`implicit_root` over an :class:`ImplicitProblem`: the one implicit-differentiation
  primitive every solve below uses (a root of an optimality condition; backward = one adjoint
  solve + one vector-Jacobian product). :class:`NewtonRoot` (``F = R(u; p)``) and
  :class:`LeastSquaresRoot` (``F = J_w^T r + rho w``) are its two instances.
- :func:`nonlinear_solve`, :func:`nonlinear_step`, :func:`solve_trajectory`: ``R(u*; p) = 0`` by
  batched Newton, gradients by one adjoint solve (implicit function theorem). :func:`newton` is
  the one Newton loop (also under :func:`femoe.reference.solve`), with :class:`NewtonOptions`
  and the info records' base :class:`NewtonInfoBase`.
- :class:`HardConstraint` (PI-HC): ``u = B w*``, ``w* = argmin 1/2 ||r(B w)||^2 + rho/2 ||w||^2``
  by Levenberg-Marquardt, gradients by the implicit function theorem with the exact Hessian;
  :func:`least_squares_solve` is its functional core over a :class:`ResidualModel`
  (:class:`SteadyResidual`, :class:`TrajectoryResidual`: rows ``O`` and DOFs ``L``), batched over
  samples (and over experts, for the mixture of experts).
- :class:`AlgebraicFields`: fields fixed by a linear algebraic equation of the others (Navier-Stokes'
  streamfunction) computed from a basis' other rows, so that every member of its span satisfies it.
- :func:`soft_residual_loss`, :func:`soft_trajectory_loss`: the soft-constraint baseline.
"""

from femoe.layers._algebraic import AlgebraicFields
from femoe.layers._hard import HardConstraint
from femoe.layers._implicit import ImplicitProblem, implicit_root
from femoe.layers._lm import (Backward, Hessian, LeastSquaresInfo, LeastSquaresRoot, LMOptions, Unconverged,
                              least_squares_solve)
from femoe.layers._newton import (REASONS, REFERENCE_NEWTON, NewtonInfoBase, NewtonOptions, NewtonRoot,
                                  NewtonSolveInfo, NewtonSystem, check_newton, newton, newton_options, nonlinear_solve,
                                  nonlinear_step, solve_trajectory)
from femoe.layers._residuals import (BlockEnergyRows, EnergyRows, ResidualModel, RowTransform, SampleEnergyRows,
                                     SteadyResidual, TimeIntegratedRows, TrajectoryResidual, energy_factor,
                                     energy_matrix)
from femoe.layers._soft import soft_residual_loss, soft_trajectory_loss

__all__ = [
    "REASONS",
    "REFERENCE_NEWTON",
    "AlgebraicFields",
    "Backward",
    "BlockEnergyRows",
    "EnergyRows",
    "HardConstraint",
    "Hessian",
    "ImplicitProblem",
    "LMOptions",
    "LeastSquaresInfo",
    "LeastSquaresRoot",
    "NewtonInfoBase",
    "NewtonOptions",
    "NewtonRoot",
    "NewtonSolveInfo",
    "NewtonSystem",
    "ResidualModel",
    "RowTransform",
    "SampleEnergyRows",
    "SteadyResidual",
    "TimeIntegratedRows",
    "TrajectoryResidual",
    "Unconverged",
    "check_newton",
    "energy_factor",
    "energy_matrix",
    "implicit_root",
    "least_squares_solve",
    "newton",
    "newton_options",
    "nonlinear_solve",
    "nonlinear_step",
    "soft_residual_loss",
    "soft_trajectory_loss",
    "solve_trajectory",
]
