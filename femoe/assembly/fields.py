"""Torch counterparts of scikit-fem's ``DiscreteField`` and ``FormExtraParams``."""

from __future__ import annotations

from typing import Any

import torch

from femoe.errors import MissingParameterError


def _unwrap(x):
    if isinstance(x, Field):
        return x.value
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(y) for y in x)
    return x


class Field:
    """A field at quadrature points: ``value`` and ``grad`` torch tensors.

    Shapes follow scikit-fem with a broadcast batch in front of the element axes: a scalar
    has ``value`` of shape ``(..., nel, nqp)`` and ``grad`` of shape ``(dim, ..., nel, nqp)``;
    a vector field has one more leading component axis on both. Arithmetic and torch
    functions act on ``value``, as they do on scikit-fem's ``DiscreteField``
    (``u * v``, ``u ** 2``, ``torch.exp(u)``).
    """

    __slots__ = ("value", "grad")

    def __init__(self, value: torch.Tensor, grad: torch.Tensor | None = None):
        self.value = value
        self.grad = grad

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return func(*_unwrap(args), **{k: _unwrap(v) for k, v in (kwargs or {}).items()})

    # arithmetic acts on the value, like numpy's DiscreteField
    def __add__(self, o):
        return self.value + _unwrap(o)

    def __radd__(self, o):
        return _unwrap(o) + self.value

    def __sub__(self, o):
        return self.value - _unwrap(o)

    def __rsub__(self, o):
        return _unwrap(o) - self.value

    def __mul__(self, o):
        return self.value * _unwrap(o)

    def __rmul__(self, o):
        return _unwrap(o) * self.value

    def __truediv__(self, o):
        return self.value / _unwrap(o)

    def __rtruediv__(self, o):
        return _unwrap(o) / self.value

    def __pow__(self, o):
        return self.value ** _unwrap(o)

    def __rpow__(self, o):
        return _unwrap(o) ** self.value

    def __neg__(self):
        return -self.value

    def __getitem__(self, key):
        return self.value[key]

    @property
    def shape(self):
        return self.value.shape

    def __repr__(self) -> str:
        g = None if self.grad is None else tuple(self.grad.shape)
        return f"Field(value={tuple(self.value.shape)}, grad={g})"


class FormParams(dict):
    """The ``w`` argument of a form: a dict with attribute access.

    Always holds ``x`` (quadrature points, ``(dim, nel, nqp)``) and ``h`` (element size); facet
    forms also ``n`` (outward unit normals); time-dependent forms ``t``; plus every parameter
    of the problem (fields as :class:`Field`, constants as tensors broadcast over elements).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: names a form read (``w.name`` or ``w["name"]``); Problem warns about parameters
        #: given but never read
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> Any:
        self.read.add(name)
        return super().__getitem__(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return super().get(name, default)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise MissingParameterError(
                f"form parameter {name!r} is not defined; available: {sorted(self)}. Pass it in "
                "params={...} of the call or in Problem(defaults={...})"
            ) from None
