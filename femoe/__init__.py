"""femoe: hard physical constraints for neural PDE solvers on finite-element meshes.

The public names, in the order data flows through them:

- meshes: :func:`read_mesh` (any meshio format, named tags), :func:`write_fields`, :func:`mesh_info`
- weak forms: :class:`Problem` (residual and sparse Jacobian in torch; fields and Dirichlet data
  per field of vector and mixed spaces), :mod:`femoe.helpers`
- boundary quantities: :func:`boundary_integral`, :func:`reaction` (drag, lift, fluxes)
- reference solves: :func:`solve`, :func:`solve_transient`
- differentiable sparse linear algebra: :class:`CSRPattern`, :class:`BatchedCSR` (the Jacobian's
  type, and what :func:`sparse_solve` takes), :func:`sparse_solve`, :func:`make_solver`
- constraint layers: :func:`nonlinear_solve` (differentiable Newton), :class:`HardConstraint`
  (PI-HC), :func:`soft_residual_loss` (the soft-constraint baseline)
- experts: :func:`partition_elements`, :func:`partition_experts`, :class:`ExpertPartition`,
  :class:`HardConstraintMoE` (PI-HC-MoE), :class:`PatchConstraint` (patch mode)
- failures: :mod:`femoe.errors`

Everything else lives in subpackages (``femoe.layers`` for time-dependent and functional
variants, ``femoe.linalg``, ``femoe.assembly``, ...). The bundled benchmark problems are
``femoe.problems`` (``get_problem``) and their meshes ``femoe.meshes``; neither is imported here.
"""

__version__ = "0.1.0"

from femoe import errors, helpers  # noqa: E402
from femoe.boundary import boundary_integral, reaction  # noqa: E402
from femoe.experts import HardConstraintMoE, PatchConstraint  # noqa: E402
from femoe.layers import HardConstraint, nonlinear_solve, soft_residual_loss  # noqa: E402
from femoe.linalg import make_solver, sparse_solve  # noqa: E402
from femoe.mesh import mesh_info, read_mesh, write_fields  # noqa: E402
from femoe.partition import ExpertPartition, partition_elements, partition_experts  # noqa: E402
from femoe.problem import Problem  # noqa: E402
from femoe.reference import solve, solve_transient  # noqa: E402
from femoe.sparse import BatchedCSR, CSRPattern  # noqa: E402

__all__ = [
    "BatchedCSR",
    "CSRPattern",
    "ExpertPartition",
    "HardConstraint",
    "HardConstraintMoE",
    "PatchConstraint",
    "Problem",
    "boundary_integral",
    "errors",
    "helpers",
    "make_solver",
    "mesh_info",
    "nonlinear_solve",
    "partition_elements",
    "partition_experts",
    "reaction",
    "read_mesh",
    "soft_residual_loss",
    "solve",
    "solve_transient",
    "sparse_solve",
    "write_fields",
]
