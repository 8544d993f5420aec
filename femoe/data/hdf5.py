"""HDF5 layout of femoe data sets, and reading them back.

One file per split (``train.h5``, ``test.h5``):

=============  =============================  ===================================================
name           shape                          content
=============  =============================  ===================================================
``points``     ``(n, dim)``                   DOF coordinates of the solution vector
``times``      ``(T,)``                       saved times (absent for steady problems)
``inputs``     ``(samples, m)``               sampled initial conditions or coefficient fields
``solutions``  ``(samples, T, n)`` or         reference solutions (the problem's DOF vectors)
               ``(samples, n)``
=============  =============================  ===================================================

File attributes: ``problem``, ``mesh_file``, ``element``, ``parameters`` (JSON), ``steady``,
``generator`` (JSON of the generator settings), ``seed``, ``split``, ``n_samples``,
``femoe_version``, ``complete`` (True).

While a split is generated it lives in ``<split>.h5.partial`` with a boolean dataset ``_done``
marking finished samples; the finished file is renamed to ``<split>.h5`` (``os.replace``), so a
file with the final name is always complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from femoe.errors import DataError

DONE = "_done"


@dataclass
class Dataset:
    """The arrays and attributes of one split."""

    points: np.ndarray
    inputs: np.ndarray
    solutions: np.ndarray
    times: np.ndarray | None
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def parameters(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("parameters", "{}"))

    @property
    def generator(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("generator", "{}"))

    def __len__(self) -> int:
        return int(self.solutions.shape[0])


def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def read_dataset(path: str | Path) -> Dataset:
    """Read a complete split file written by :func:`femoe.data.generate`.

    Raises
    ------
    femoe.errors.DataError
        The file is missing, unreadable, incomplete (a ``.partial`` file) or lacks a dataset.
    """
    path = Path(path)
    if path.name.endswith(".partial"):
        raise DataError(f"{path}: this is an unfinished split; run `femoe generate` again with the same "
                        "arguments to complete it")
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            if not attrs.get("complete", False) or DONE in f:
                raise DataError(f"{path}: the file is not a complete femoe data set")
            missing = [k for k in ("points", "inputs", "solutions") if k not in f]
            if missing:
                raise DataError(f"{path}: missing dataset(s) {missing}")
            return Dataset(
                points=f["points"][()],
                inputs=f["inputs"][()],
                solutions=f["solutions"][()],
                times=f["times"][()] if "times" in f else None,
                attrs=attrs,
            )
    except OSError as exc:
        raise DataError(f"{path}: cannot read the HDF5 file ({exc})") from exc


def settings_of(path: Path) -> dict[str, Any] | None:
    """The ``generator`` settings recorded in a (partial or complete) file, or None if unreadable."""
    try:
        with h5py.File(path, "r") as f:
            return json.loads(_attr(f.attrs["generator"]))
    except (OSError, KeyError, ValueError):
        return None
