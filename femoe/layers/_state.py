"""State inputs: the tensors a layer hands its residual model besides the problem's parameters.

A basis-mode layer calls its model (:class:`femoe.layers.ResidualModel`) with one mapping ``p``:
the problem's parameters under their names (strings) and the layer's *state inputs* under
:class:`StateKey` keys. Both kinds become inputs of the implicit-differentiation Function
(:func:`femoe.layers._validate.split_params`), so gradients reach a state input exactly as they
reach a parameter. A :class:`StateKey` is not a string, so no parameter name can clash with one
(there are no reserved names). The state inputs are:

- :data:`INITIAL`: the initial condition ``u0`` ``(batch, n)`` of a trajectory model
  (:class:`femoe.layers.TrajectoryResidual`, the experts' folded models);
- :data:`U_OLD`: the previous level ``u^{t-1}`` of one implicit time step
  (:func:`femoe.layers.nonlinear_step`);
- :data:`COARSE_FIELD`: the global field two-level experts correct
  (:class:`femoe.experts.HardConstraintMoE` with ``coarse=True``);
- :data:`PATCH_FIXED`, :data:`PATCH_OLD`: patch mode's held DOF values (the network's field
  outside the interiors) and its previous level (:class:`femoe.experts.PatchConstraint`).

A model reads its own state inputs and passes the rest on to the problem with
:func:`parameters_only`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class StateKey:
    """The key of one state input in a model's parameter mapping (compared by ``name``)."""

    name: str

    def __repr__(self) -> str:
        return f"<state input {self.name}>"


INITIAL = StateKey("initial")
U_OLD = StateKey("u_old")
COARSE_FIELD = StateKey("coarse_field")
PATCH_FIXED = StateKey("patch_fixed")
PATCH_OLD = StateKey("patch_old")


def parameters_only(p: Mapping[Any, Any]) -> dict[str, Any]:
    """``p`` without its state inputs: the problem's parameters."""
    return {k: v for k, v in p.items() if not isinstance(k, StateKey)}
