"""femoe: hard physical constraints for neural PDE solvers on finite-element meshes.

The public names, in the order data flows through them:

- meshes: :func:`read_mesh` (any meshio format, named tags), :func:`write_fields`, :func:`mesh_info`
- weak forms: :class:`Problem` (residual and sparse Jacobian in torch; fields and Dirichlet data
  per field of vector and mixed spaces), :mod:`femoe.helpers`
- boundary quantities: :func:`boundary_integral`, :func:`reaction` (drag, lift, fluxes)
- reference solves: :func:`solve`, :func:`solve_transient`
- differentiable linear algebra: :func:`sparse_solve`, :func:`make_solver`
- experts: :func:`partition_elements`, :func:`partition_experts`, :class:`ExpertPartition`

Everything else lives in subpackages (``femoe.assembly``, ``femoe.linalg``, ...).
"""

__version__ = "0.1.0"

from femoe import errors, helpers  # noqa: E402
from femoe.boundary import boundary_integral, reaction  # noqa: E402
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
    "Problem",
    "boundary_integral",
    "errors",
    "helpers",
    "make_solver",
    "mesh_info",
    "partition_elements",
    "partition_experts",
    "reaction",
    "read_mesh",
    "solve",
    "solve_transient",
    "sparse_solve",
    "write_fields",
]
