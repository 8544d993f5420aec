"""Inference with a trained checkpoint, from Python or ``femoe predict``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from femoe.errors import CheckpointError, DataError, NonFiniteError, ShapeError
from femoe.train.config import config_from_dict


def load_model(checkpoint: str | Path):
    """``(task, method)`` rebuilt from a checkpoint: the problem, mesh, time levels, sensors and
    config it was trained with. Refuses a checkpoint whose mesh differs from the one its config
    builds now (a changed mesh file or discretisation)."""
    from femoe.train.methods import build_method
    from femoe.train.task import Task, check_checkpoint_problem

    path = Path(checkpoint)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        st = torch.load(path, weights_only=False)
        meta = st["meta"]
        cfg = config_from_dict(meta["config"])
    except Exception as exc:
        raise CheckpointError(f"{path}: not a femoe checkpoint ({exc})") from exc
    task = Task(cfg, load_data=False)
    check_checkpoint_problem(meta, task, path)
    task.sensors = np.asarray(meta["sensors"], dtype=int)
    task.input_length = int(meta["input_length"])
    if meta.get("times") is not None:
        task.times = np.asarray(meta["times"])
        task.dt = float(task.times[1] - task.times[0])
        task.n_levels = len(task.times)
    method = build_method(st["method"], task)
    method.load_state_dict(st["model"])
    method.eval()
    return task, method


def load_inputs(path: str | Path) -> np.ndarray:
    """Inputs ``(samples, m)`` from a ``.npy`` file or the ``inputs`` of an HDF5 data file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such input file")
    if path.suffix == ".npy":
        a = np.load(path)
    elif path.suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(path, "r") as f:
            if "inputs" not in f:
                raise DataError(f"{path}: no 'inputs' dataset")
            a = f["inputs"][()]
    else:
        raise DataError(f"{path}: inputs must be a .npy or .h5 file")
    return np.atleast_2d(np.asarray(a, dtype=float))


@torch.no_grad()
def predict(checkpoint: str | Path, inputs: np.ndarray):
    """``(task, u)``: fields predicted (network + constraint layer) for ``inputs`` ``(samples, m)``."""
    task, method = load_model(checkpoint)
    x = np.atleast_2d(np.asarray(inputs, dtype=float))
    if x.shape[1] != task.input_length:
        raise ShapeError(f"inputs must have {task.input_length} values per sample (as in training); got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise NonFiniteError("inputs contain NaN or Inf")
    u, _ = method(torch.as_tensor(x))
    return task, u.numpy()


def predict_file(checkpoint, inputs: np.ndarray, out: str | Path) -> list[Path]:
    """Predict and write one VTU (steady) or XDMF (time-dependent) file per sample, plus ``.npy``."""
    from femoe.mesh import write_fields

    task, u = predict(checkpoint, inputs)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out.with_suffix(".npy"), u)
    paths = [out.with_suffix(".npy")]
    mesh = task.spec.output_mesh(task.problem)
    for i in range(u.shape[0]):
        p = out if i == 0 else out.with_name(f"{out.stem}_{i}{out.suffix}")
        fields = task.spec.output_fields(task.problem, u[i])
        if task.time_dependent:
            p = p.with_suffix(".xdmf")
            write_fields(p, mesh, fields, times=task.times)
        else:
            write_fields(p, mesh, fields)
        paths.append(p)
    return paths
