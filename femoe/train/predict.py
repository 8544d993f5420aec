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
        raise DataError(f"{path}: no such input file" + (" (it is a folder)" if path.is_dir() else ""))
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            a = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable .npy array ({exc}); write the inputs with numpy.save") from None
    elif suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                if "inputs" not in f:
                    raise DataError(f"{path}: no 'inputs' dataset (it holds {sorted(f)}); give a data file written "
                                    "by femoe generate, or a .npy array")
                a = f["inputs"][()]
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file ({exc}); give a data file written by femoe "
                            "generate, or a .npy array") from None
    else:
        raise DataError(f"{path}: inputs must be a .npy or .h5 file; got suffix {path.suffix!r}")
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
        raise DataError(f"{path}: inputs must be numbers; the array holds {getattr(a, 'dtype', type(a))} values")
    if a.size == 0:
        raise DataError(f"{path}: the array is empty (shape {a.shape}); give at least one sample")
    if a.ndim > 2:
        raise ShapeError(f"{path}: inputs must have shape (samples, m) or (m,); got {a.shape}")
    return np.atleast_2d(a.astype(float))


@torch.no_grad()
def predict(checkpoint: str | Path, inputs: np.ndarray):
    """``(task, u)``: fields predicted (network + constraint layer) for ``inputs`` ``(samples, m)``."""
    try:
        x = np.atleast_2d(np.asarray(inputs, dtype=float))
    except (TypeError, ValueError) as exc:
        raise ShapeError(f"inputs must be an array of numbers ({exc})") from None
    if x.size == 0 or x.ndim != 2:
        raise ShapeError(f"inputs must have shape (samples, m) with at least one sample; got {x.shape}")
    if not np.isfinite(x).all():
        raise NonFiniteError(f"inputs contain NaN or Inf (sample {int(np.nonzero(~np.isfinite(x))[0][0])}); "
                             "give finite values")
    task, method = load_model(checkpoint)
    if x.shape[1] != task.input_length:
        raise ShapeError(f"inputs must have {task.input_length} values per sample (as in training); got {x.shape[1]}")
    task.spec.check_inputs(x)
    u, _ = method(torch.as_tensor(x))
    return task, u.numpy()


def predict_file(checkpoint, inputs: np.ndarray, out: str | Path) -> list[Path]:
    """Predict and write one VTU (steady) or XDMF (time-dependent) file per sample, plus ``.npy``."""
    from femoe.mesh import write_fields

    out = Path(out)
    if out.suffix.lower() not in (".vtu", ".xdmf"):
        raise DataError(f"{out}: the output must be a .vtu (steady) or .xdmf (time series) file; got suffix "
                        f"{out.suffix!r}")
    task, u = predict(checkpoint, inputs)
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
