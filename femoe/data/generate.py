"""Generate data sets of reference solutions (``femoe generate``).

Determinism: sample ``i`` of split ``s`` draws its input from
``numpy.random.default_rng([seed, s, i])`` (:func:`sample_rng`), so the arrays depend on the
seed only, not on the number of worker processes, their scheduling, the shard size, or
interruptions.

Shards: the samples still to do are cut into shards of consecutive indices, and each shard is
solved in one call of the problem's :meth:`~femoe.problems.ProblemSpec.reference_batch` (for
diffusion-sorption: all samples of the shard advanced together by one batched Newton per time
step); with ``workers > 1`` the shards go to a process pool. A batched solver computes each
sample exactly as it would alone (bit for bit), so the files do not depend on the shard size.
Problems without a batched solver get shards of one sample.

Resuming: each split is written to ``<split>.h5.partial`` with a ``_done`` mask, flushed after
every shard. Running the same command again continues with the samples not yet done (an
interrupted shard is solved again); a partial file started with other settings is an error
(delete it or pick another folder). When all samples are done the file is renamed to
``<split>.h5``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Mapping

import h5py
import numpy as np

from femoe.data.hdf5 import DONE, settings_of
from femoe.errors import ConvergenceError, DataError

log = logging.getLogger(__name__)

#: split names and their ids in the per-sample seed
SPLITS: dict[str, int] = {"train": 0, "test": 1}


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator that draws input ``index`` of ``split``."""
    return np.random.default_rng([int(seed), SPLITS[split], int(index)])


def _check_count(name: str, n: Any) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise DataError(f"{name} must be a positive integer; got {n!r}")
    return int(n)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise DataError(f"output folder {out} exists and is not a folder; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".femoe-write-test-"):
            pass
    except OSError as exc:
        raise DataError(f"cannot write to output folder {out} ({exc.strerror or exc}); choose a writable "
                        "folder with --out") from exc


# --------------------------------------------------------------------- one sample (any process)
_WORKER: dict[str, Any] = {}


def _init_worker(name: str, params: dict[str, Any]) -> None:
    import torch

    from femoe.problems import get_problem

    torch.set_num_threads(1)
    spec = get_problem(name)
    _WORKER["spec"] = spec
    _WORKER["problem"] = spec.build(**params)


def _solve_shard(split: str, indices: list[int], seed: int
                 ) -> tuple[list[int], np.ndarray, np.ndarray | None, np.ndarray]:
    """The samples ``indices`` of ``split`` in one :meth:`reference_batch` call; each input is
    drawn from its own generator, so a sample does not depend on its shard."""
    spec, problem = _WORKER["spec"], _WORKER["problem"]
    X = np.stack([np.asarray(spec.sample_inputs(sample_rng(seed, split, i), 1, problem)[0], dtype=np.float64)
                  for i in indices])
    try:
        times, U = spec.reference_batch(problem, X, sample_ids=list(indices))
    except ConvergenceError as exc:  # name the split; the solver names the samples
        raise ConvergenceError(f"{split} split, shard of samples {indices[0]}..{indices[-1]}: {exc}",
                               info=exc.info) from exc
    U = np.asarray(U, dtype=np.float64)
    if U.shape[0] != len(indices):
        raise DataError(f"{spec.name}: reference_batch returned {U.shape[0]} solutions for {len(indices)} inputs")
    info = getattr(problem, "last_reference_info", None)
    if info:
        log.debug("%s samples %d..%d: %s", split, indices[0], indices[-1], info)
    return list(indices), X, times, U


def _has_batched_solver(spec) -> bool:
    from femoe.problems import ProblemSpec

    return type(spec).reference_batch is not ProblemSpec.reference_batch


def shard_size(spec, problem, batch: int | None = None) -> int:
    """Samples per shard: ``batch`` if given; else 1 for problems without a batched solver,
    and for batched ones as many as keep a state array of all of them near 16,000 values (a
    cache-sized working set: beyond it the batched arithmetic gets slower per sample)."""
    if batch is not None:
        return _check_count("batch", batch)
    if not _has_batched_solver(spec):
        return 1
    return int(max(1, min(128, 16384 // max(1, problem.n))))


# --------------------------------------------------------------------- driver
def generate(
    problem: str,
    out: str | os.PathLike,
    n_train: int,
    n_test: int,
    *,
    seed: int = 0,
    workers: int = 1,
    params: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    batch: int | None = None,
) -> dict[str, Path]:
    """Generate ``train.h5`` and ``test.h5`` for a registered problem.

    Parameters
    ----------
    problem
        A name from :data:`femoe.problems.PROBLEMS`.
    out
        Output folder (created if needed).
    n_train, n_test
        Number of samples per split (positive).
    seed
        Seed of every random input (see the module documentation).
    workers
        Number of processes solving samples (1: in this process).
    params
        Problem parameter overrides (validated against their physical ranges).
    overwrite
        Replace complete split files generated with other settings (otherwise an error).
    progress
        Show a tqdm progress bar on stderr.
    batch
        Samples per shard (solved together by the problem's batched solver); default
        :func:`shard_size`. It changes the speed, not the data.

    Returns
    -------
    dict
        Split name -> path of the complete file.

    Raises
    ------
    femoe.errors.ConfigError
        Unknown problem.
    femoe.errors.DataError
        Non-positive counts or workers, an output folder that cannot be written, a partial file
        from other settings. Nothing is written before these checks pass.
    femoe.errors.ParameterError
        A parameter outside its physical range.
    """
    from femoe.problems import get_problem

    from femoe import __version__

    spec = get_problem(problem)
    counts = {"train": _check_count("n_train", n_train), "test": _check_count("n_test", n_test)}
    workers = _check_count("workers", workers)
    if batch is not None:
        batch = _check_count("batch", batch)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"seed must be a non-negative integer; got {seed!r}")
    config = spec.parameters(**dict(params or {}))
    out = Path(out)
    _check_out(out)

    t0 = time.perf_counter()
    prob = spec.build(**dict(params or {}))
    meta = dict(spec.metadata(prob))
    # how to read a solution vector of a vector or mixed space: the fields, their DOF counts and
    # components (split with Problem.split / field_dofs), and how many DOFs are Dirichlet
    meta.setdefault("fields", json.dumps({f: {"n_dofs": int(prob.field_dofs(f).size),
                                               "components": list(prob.components[f])} for f in prob.fields}))
    meta.setdefault("n_dirichlet", int(prob.dirichlet_dofs.size))
    points = spec.points(prob)
    _WORKER.update(spec=spec, problem=prob)
    size = shard_size(spec, prob, batch)
    log.info("%s: %d DOFs, building took %.2f s; shards of up to %d samples", problem, prob.n,
             time.perf_counter() - t0, size)

    results: dict[str, Path] = {}
    pool = None
    try:
        for split, n in counts.items():
            settings = {"problem": problem, "parameters": config, "seed": int(seed), "split": split,
                        "n_samples": n}
            final = out / f"{split}.h5"
            partial = out / f"{split}.h5.partial"
            if final.exists():
                if settings_of(final) == settings:
                    log.info("%s is complete already", final)
                    results[split] = final
                    continue
                if not overwrite:
                    raise DataError(f"{final} exists and was generated with other settings; pass --overwrite "
                                    "to replace it or choose another --out")
            if workers > 1 and pool is None:
                pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                                           initializer=_init_worker, initargs=(problem, dict(params or {})))
            _generate_split(partial, final, settings, meta, points, __version__, pool, progress, workers, size)
            results[split] = final
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _open_partial(partial: Path, settings: dict[str, Any], meta: dict[str, Any], points: np.ndarray,
                  version: str) -> h5py.File:
    if partial.exists():
        old = settings_of(partial)
        if old is None:
            log.warning("%s is unreadable (interrupted while writing?); starting this split again", partial)
            partial.unlink()
        elif old != settings:
            raise DataError(f"{partial} is an unfinished run with other settings ({json.dumps(old)}); delete it "
                            "to start again or choose another --out")
        else:
            f = h5py.File(partial, "r+")
            log.info("resuming %s: %d of %d samples done", partial, int(f[DONE][()].sum()), settings["n_samples"])
            return f
    f = h5py.File(partial, "w")
    f.attrs.update({k: v for k, v in meta.items()})
    f.attrs["generator"] = json.dumps(settings, sort_keys=True)
    f.attrs["seed"] = settings["seed"]
    f.attrs["split"] = settings["split"]
    f.attrs["n_samples"] = settings["n_samples"]
    f.attrs["femoe_version"] = version
    f.attrs["complete"] = False
    f.create_dataset("points", data=points)
    f.create_dataset(DONE, data=np.zeros(settings["n_samples"], dtype=bool))
    f.flush()
    return f


def _write(f: h5py.File, indices: list[int], X: np.ndarray, times: np.ndarray | None, U: np.ndarray) -> None:
    """Store the samples ``indices`` (increasing) with inputs ``X`` and solutions ``U``, mark them
    done, flush."""
    n = f[DONE].shape[0]
    if "solutions" not in f:
        f.create_dataset("inputs", shape=(n, *X.shape[1:]), dtype=np.float64, chunks=(1, *X.shape[1:]))
        f.create_dataset("solutions", shape=(n, *U.shape[1:]), dtype=np.float64, chunks=(1, *U.shape[1:]))
        if times is not None:
            f.create_dataset("times", data=np.asarray(times, dtype=np.float64))
    if list(indices) == list(range(indices[0], indices[0] + len(indices))):
        run = slice(indices[0], indices[0] + len(indices))
        f["inputs"][run] = X
        f["solutions"][run] = U
        f[DONE][run] = True
    else:
        for k, i in enumerate(indices):
            f["inputs"][i] = X[k]
            f["solutions"][i] = U[k]
            f[DONE][i] = True
    f.flush()


def _shards(todo: list[int], size: int, workers: int) -> list[list[int]]:
    """``todo`` (increasing) cut into runs of at most ``size`` indices; with several workers
    into a multiple of ``workers`` runs of near-equal length, so that none waits idle at the end."""
    if not todo:
        return []
    count = -(-len(todo) // size)
    if workers > 1:
        count = -(-count // workers) * workers
        size = max(1, -(-len(todo) // count))
    return [todo[k:k + size] for k in range(0, len(todo), size)]


def _generate_split(partial: Path, final: Path, settings: dict, meta: dict, points: np.ndarray, version: str,
                    pool: ProcessPoolExecutor | None, progress: bool, workers: int, size: int = 1) -> None:
    from tqdm.auto import tqdm

    split, seed, n = settings["split"], settings["seed"], settings["n_samples"]
    f = _open_partial(partial, settings, meta, points, version)
    try:
        todo = [int(i) for i in np.nonzero(~f[DONE][()])[0]]
        bar = tqdm(total=n, initial=n - len(todo), desc=f"{settings['problem']} {split}", unit="sample",
                   disable=not progress)
        t0 = time.perf_counter()
        shards = _shards(todo, size, workers if pool is not None else 1)
        if pool is None:
            for shard in shards:
                _write(f, *_solve_shard(split, shard, seed))
                bar.update(len(shard))
        else:
            pending = set()
            queue = iter(shards)
            for shard in queue:  # keep about 2 shards per worker in flight
                pending.add(pool.submit(_solve_shard, split, shard, seed))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    try:
                        result = fut.result()
                    except BrokenProcessPool as exc:
                        raise DataError(
                            "a worker process died (out of memory, or the calling script cannot be "
                            "re-imported: guard it with `if __name__ == '__main__':`); the samples done "
                            "so far are kept, run again to resume"
                        ) from exc
                    _write(f, *result)
                    bar.update(len(result[0]))
                    nxt = next(queue, None)
                    if nxt is not None:
                        pending.add(pool.submit(_solve_shard, split, nxt, seed))
        bar.close()
        if todo:
            log.info("%s: %d samples in %.1f s", split, len(todo), time.perf_counter() - t0)
        del f[DONE]
        f.attrs["complete"] = True
    finally:
        f.close()
    os.replace(partial, final)
