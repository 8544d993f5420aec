"""Every exception and warning femoe raises, in one place.

Messages follow one rule: say what was wrong (naming the file, argument or expert), what was
expected, what was received, and what to do about it. Catch :class:`FemoeError` to catch them
all; each class also derives from the closest built-in exception so that generic handlers
(``except ValueError``, ``except FileNotFoundError``) keep working.
"""

from __future__ import annotations


class FemoeError(Exception):
    """Base class of all femoe errors."""


# --- meshes -------------------------------------------------------------------------------
class MeshError(FemoeError, ValueError):
    """A mesh file or mesh object cannot be used.

    ``path`` is the offending file (or ``None`` for in-memory meshes).
    """

    def __init__(self, message: str, path: object = None):
        self.path = None if path is None else str(path)
        if path is not None and str(path) not in message:
            message = f"{path}: {message}"
        super().__init__(message)


class MeshFileNotFoundError(MeshError, FileNotFoundError):
    """The mesh file does not exist."""


class MeshFormatError(MeshError):
    """The mesh format is unknown or cannot be deduced from the file name."""


class MeshReadError(MeshError):
    """The file exists but cannot be parsed (corrupt, truncated, wrong format)."""


class UnsupportedCellError(MeshError):
    """The mesh has no cells femoe can use (or only unsupported ones)."""


class MixedCellTypesError(MeshError):
    """One domain mixes several cell types (e.g. triangles and quadrilaterals)."""


class DegenerateElementError(MeshError):
    """Elements with zero (or numerically zero) measure."""


class DuplicateNodesError(MeshError):
    """Several nodes share the same coordinates."""


class NonFiniteCoordinatesError(MeshError):
    """Node coordinates that are NaN or infinite."""


# --- problems, shapes, values -------------------------------------------------------------
class ProblemError(FemoeError, ValueError):
    """A weak-form problem is ill-defined (unknown tag, bad parameter, bad integrand)."""


class MissingParameterError(ProblemError, AttributeError):
    """A form reads a parameter (``w.name``) that the call did not provide."""


class ShapeError(FemoeError, ValueError):
    """A tensor has the wrong shape, dtype or device."""


class NonFiniteError(FemoeError, FloatingPointError):
    """NaN or Inf where finite numbers are required (e.g. in network output)."""


class ConfigError(FemoeError, ValueError):
    """An option or name is not valid (unknown solver, partitioner, problem...)."""


# --- solvers ------------------------------------------------------------------------------
class SolverError(FemoeError, RuntimeError):
    """A linear or nonlinear solve failed."""


class ConvergenceError(SolverError):
    """An iterative solve did not reach its tolerance. ``info`` holds the solver record."""

    def __init__(self, message: str, info: object = None):
        self.info = info
        super().__init__(message)


class SingularMatrixError(SolverError):
    """A matrix (global or an expert's patch) is singular or not positive definite."""


# --- experts, data, training --------------------------------------------------------------
class PartitionError(FemoeError, ValueError):
    """A mesh cannot be partitioned as asked."""


class DistributedError(FemoeError, RuntimeError):
    """A torch.distributed run failed (a rank died, a collective timed out)."""


class DataError(FemoeError, ValueError):
    """A data set cannot be generated or read as asked."""


class CheckpointError(FemoeError, ValueError):
    """A checkpoint is missing, corrupt, or does not match the problem/mesh."""


# --- warnings -----------------------------------------------------------------------------
class FemoeWarning(UserWarning):
    """Base class of femoe warnings."""


class MeshRepairWarning(FemoeWarning):
    """A mesh was repaired on reading (elements reordered, unused nodes dropped)."""


class ConvergenceWarning(FemoeWarning):
    """A solve did not converge; its result is used but flagged in the info record."""


class DeviceFallbackWarning(FemoeWarning):
    """A computation ran on the CPU although its inputs live on another device."""


# --- optional dependencies ----------------------------------------------------------------
class MissingDependencyError(FemoeError, ImportError):
    """An optional package (pymetis, gmsh...) is needed for what was asked but not installed."""


class ParameterError(ProblemError):
    """A problem parameter is unknown or outside its physical range (e.g. a negative
    diffusivity, a porosity outside (0, 1))."""


class FieldError(ProblemError):
    """A field or component name is unknown, or boundary data does not say which fields of a
    mixed space it fixes."""


class AmbiguousParameterError(ProblemError, ShapeError):
    """A parameter's shape fits more than one kind (per-sample constants, nodal or element
    field, Dirichlet values...) or none; declare it in ``Problem(coefficients={...})``."""


class EmptyGroupWarning(FemoeWarning):
    """A mesh file names a physical group (boundary or subdomain) that holds no elements; it
    is kept as an empty tag so that ``femoe mesh info`` lists it with count 0."""


class UnusedParameterWarning(FemoeWarning):
    """A parameter was passed to a problem but no form or boundary condition reads it (a
    misspelt name, or an input meant for another parameter): the result does not depend on it."""
