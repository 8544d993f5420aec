"""femoe: hard physical constraints for neural PDE solvers on finite-element meshes."""

__version__ = "0.1.0"
