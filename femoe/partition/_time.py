"""Time windows for spatio-temporal experts."""

from __future__ import annotations

import numbers

import numpy as np

from femoe.errors import PartitionError


def time_windows(n_steps: int, n_windows: int) -> list[tuple[int, int]]:
    """Split time steps ``0..n_steps-1`` into contiguous windows of nearly equal length.

    Parameters
    ----------
    n_steps : int
        Number of time steps (levels) to split.
    n_windows : int
        Number of windows, ``1 <= n_windows <= n_steps``.

    Returns
    -------
    list of (int, int)
        Half-open ``(start, stop)`` ranges covering ``0..n_steps`` in order; lengths differ
        by at most one (the longer windows come first).

    Raises
    ------
    PartitionError
        If the arguments are not integers or ``n_windows`` is not in ``[1, n_steps]``.
    """
    for name, value in (("n_steps", n_steps), ("n_windows", n_windows)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise PartitionError(f"{name} must be an integer, got {value!r}")
    if not 1 <= n_windows <= n_steps:
        raise PartitionError(
            f"n_windows must be in [1, n_steps={n_steps}] so that each window has a step, "
            f"got {n_windows}"
        )
    sizes = np.full(n_windows, n_steps // n_windows)
    sizes[: n_steps % n_windows] += 1
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for stop, size in zip(stops, sizes)]
