"""The time scheme of a time-dependent problem (:class:`ThetaScheme`)."""

from __future__ import annotations

from dataclasses import dataclass

from femoe.errors import ProblemError


@dataclass(frozen=True)
class ThetaScheme:
    """The time scheme of a time-dependent :class:`Problem`, in one place:

    ``R^t = (S(u^t) - S(u^{t-1})) / dt + theta A(u^t, t) + (1 - theta) A(u^{t-1}, t - dt)``

    (``theta = 1`` implicit Euler, ``0.5`` Crank-Nicolson), and the Jacobian of a step with
    respect to its new level, ``S'(u^t) / dt + theta A'(u^t, t)``. Evaluating ``S`` and ``A`` is
    the problem's business; combining them is the scheme's."""

    theta: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.theta <= 1.0:
            raise ProblemError(f"theta must lie in [0, 1]; got {self.theta}")

    @property
    def needs_new(self) -> bool:
        """Whether the rows read ``A`` at the new level (``theta > 0``)."""
        return self.theta > 0

    @property
    def needs_old(self) -> bool:
        """Whether the rows read ``A`` at the old level (``theta < 1``)."""
        return self.theta < 1

    def rows(self, S_new, S_old, A_new, A_old, dt: float):
        """The step rows; ``A_new`` / ``A_old`` may be ``None`` where their weight is 0."""
        R = (S_new - S_old) / dt
        if self.needs_new:
            R = R + self.theta * A_new
        if self.needs_old:
            R = R + (1 - self.theta) * A_old
        return R

    def new_level_jacobian(self, S_jac, A_jac, dt: float):
        """``S'(u^t) / dt + theta A'(u^t)`` (values on one pattern, or ``A_jac = None`` for theta = 0)."""
        return S_jac / dt if not self.needs_new else S_jac / dt + self.theta * A_jac
