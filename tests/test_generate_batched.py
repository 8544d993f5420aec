"""Batched data generation: the diffusion-sorption samples of a shard advanced together.

The batched Newton must give each sample what the one-at-a-time Newton gives it (to round-off),
bit for bit the same result whichever samples share its batch, the same per-sample iteration
counts, and an error naming any sample that does not converge."""

import numpy as np
import pytest

from femoe.data import generate, read_dataset
from femoe.data.generate import _shards, shard_size
from femoe.errors import ConvergenceError
from femoe.problems import get_problem
from femoe.problems.diffusion_sorption_1d import _Operator, march, march_batch

SPEC = get_problem("diffusion_sorption_1d")
SMALL = {"n_cells": 32, "T": 20.0, "n_saved": 5, "substeps": 8, "grading": 2}


@pytest.mark.parametrize("ic", ["constant", "random_field"])
def test_batched_march_equals_one_at_a_time_to_round_off(ic):
    problem = SPEC.build(**SMALL, ic=ic)
    X = SPEC.sample_inputs(np.random.default_rng(5), 6, problem)
    times, U = march_batch(problem, X)
    with_predictor = sum(problem.last_reference_info["newton_iterations"])
    assert U.shape == (6, 5, problem.n)
    for k, x in enumerate(X):
        t1, u1 = march(problem, x)
        np.testing.assert_array_equal(times, t1)
        assert np.abs(U[k] - u1).max() < 1e-10
    # a real trajectory, not the initial state copied: the boundary layer moved in
    assert np.abs(U[:, -1] - U[:, 0]).max() > 0.1
    # Newton started from the old state (as march does) instead of the extrapolated one: the
    # same trajectories to round-off, with more iterations
    _, V = march_batch(problem, X, predictor=False)
    assert np.abs(V - U).max() < 1e-10
    assert sum(problem.last_reference_info["newton_iterations"]) > with_predictor


def test_a_sample_does_not_depend_on_its_batch():
    problem = SPEC.build(**SMALL, ic="random_field")
    X = SPEC.sample_inputs(np.random.default_rng(1), 7, problem)
    _, all7 = march_batch(problem, X)
    _, alone = march_batch(problem, X[4:5])
    _, other = march_batch(problem, X[[6, 4, 0]])
    assert all7[4].tobytes() == alone[0].tobytes() == other[1].tobytes()
    # the single-sample reference is the batched solver with one sample: the data set's bytes
    _, ref = SPEC.reference(problem, X[4])
    assert ref.tobytes() == all7[4].tobytes()


def test_frozen_samples_take_their_own_newton_iterations():
    problem = SPEC.build(n_cells=64)
    op = _Operator(problem)
    rng = np.random.default_rng(0)
    # from u = 0 (sorption's singular point) Newton needs 13 iterations, from u = 1/2 four: the
    # converged samples wait frozen while the others go on
    U_old = np.stack([0.2 * rng.random(problem.n), np.zeros(problem.n), np.full(problem.n, 0.5)])
    U, iters = op.step_batch(U_old, 0.7, 0.5, 0.7)
    seq = [op.step(u, 0.7, 0.5, 0.7) for u in U_old]
    assert iters.tolist() == [it for _, it in seq]
    assert len(set(iters.tolist())) > 1
    for k, (u, _) in enumerate(seq):
        assert np.abs(U[k] - u).max() < 1e-12


def test_an_unconverged_sample_is_an_error_naming_it():
    problem = SPEC.build(n_cells=16)
    op = _Operator(problem)
    U_old = np.full((3, problem.n), 0.1)
    U_old[1, 5] = np.nan  # a NaN must not spread to the other blocks of the batched solve
    with pytest.raises(ConvergenceError, match=r"sample\(s\) \[11\]") as exc:
        op.step_batch(U_old, 0.5, 0.5, 0.5, sample_ids=[10, 11, 12])
    assert exc.value.info["samples"] == [11]
    # finite but no convergence in 30 iterations (a solve that keeps moving sample 4): the
    # others converge and are frozen, sample 4 alone is named
    import femoe.problems.diffusion_sorption_1d as ds

    solve = ds._solve_spd_tridiagonal_blocks

    def stuck(diag, off, rhs, ids):
        du = solve(diag, off, rhs, ids)
        du[np.asarray(ids) == 4] += 1e-3
        return du

    U_old = np.full((3, problem.n), 0.1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ds, "_solve_spd_tridiagonal_blocks", stuck)
        with pytest.raises(ConvergenceError, match=r"did not converge at t = 0.5 for sample\(s\) \[4\]") as exc:
            op.step_batch(U_old, 0.5, 0.5, 0.5, sample_ids=[3, 4, 5])
    assert exc.value.info["samples"] == [4]


def test_generate_names_the_split_and_sample_that_did_not_converge(tmp_path, monkeypatch):
    original = type(SPEC).sample_inputs

    def poisoned(self, rng, n, problem=None):
        x = original(self, rng, n, problem)
        if x[0, 0] == bad:
            x[:, 3] = np.nan
        return x

    from femoe.data.generate import sample_rng

    bad = original(SPEC, sample_rng(0, "train", 2), 1, SPEC.build(**SMALL))[0, 0]
    monkeypatch.setattr(type(SPEC), "sample_inputs", poisoned)
    with pytest.raises(ConvergenceError, match=r"train split.*sample\(s\) \[2\]"):
        generate("diffusion_sorption_1d", tmp_path, 4, 1, seed=0, progress=False, params=SMALL, batch=4)


def test_shard_size_changes_nothing_but_the_speed(tmp_path):
    a = generate("diffusion_sorption_1d", tmp_path / "a", 5, 1, seed=3, progress=False, params=SMALL, batch=1)
    b = generate("diffusion_sorption_1d", tmp_path / "b", 5, 1, seed=3, progress=False, params=SMALL, batch=2)
    c = generate("diffusion_sorption_1d", tmp_path / "c", 5, 1, seed=3, progress=False, params=SMALL)
    for split in ("train", "test"):
        da, db, dc = (read_dataset(p[split]) for p in (a, b, c))
        assert da.solutions.tobytes() == db.solutions.tobytes() == dc.solutions.tobytes()
        assert da.inputs.tobytes() == db.inputs.tobytes() == dc.inputs.tobytes()
    # and each stored trajectory is the one-at-a-time Newton's to round-off
    d = read_dataset(a["train"])
    problem = SPEC.build(**SMALL)
    for x, u in zip(d.inputs, d.solutions):
        assert np.abs(march(problem, x)[1] - u).max() < 1e-10


def test_shards_and_their_default_size():
    assert _shards([0, 1, 2, 3, 4], 2, 1) == [[0, 1], [2, 3], [4]]
    assert _shards([0, 1, 2, 3, 4], 64, 2) == [[0, 1, 2], [3, 4]]  # every worker gets a shard
    assert _shards([1, 4, 7], 64, 1) == [[1, 4, 7]]
    assert [len(s) for s in _shards(list(range(32)), 15, 2)] == [8, 8, 8, 8]  # not 15, 15, 2
    assert sum(_shards(list(range(101)), 15, 2), []) == list(range(101))
    assert _shards([], 4, 2) == []
    ds = SPEC.build(**SMALL)
    assert shard_size(SPEC, ds) == min(128, 16384 // ds.n) and shard_size(SPEC, ds, 3) == 3
    poisson = get_problem("poisson_mms")
    assert shard_size(poisson, poisson.build(refine=2)) == 1  # no batched solver: one sample a shard
