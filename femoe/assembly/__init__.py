"""Torch evaluation of scikit-fem weak forms: fields at quadrature points, basis jets, and the
residual and exact linearisation of a pointwise integrand (used by :class:`femoe.Problem`)."""

from femoe.assembly.fields import Field, FormParams
from femoe.assembly.torch_basis import FieldLayout, TorchBasis, TorchBasisView

__all__ = ["Field", "FieldLayout", "FormParams", "TorchBasis", "TorchBasisView"]
