"""Two-level experts (``HardConstraintMoE(coarse=True)``): a global solve, then local corrections.

The defining property: every expert's correction lives on DOFs whose Jacobian neighbours it
owns, so each row depends on one expert's weights only, and the experts' summed objectives are
the single solve's objective at the stitched field, exactly. Hence the stitched residual is
never above the coarse (PI-HC) one. Checked on a steady P1 problem with facet rows, the heat
equation, nonlinear diffusion-sorption and the mixed (omega, psi) Navier-Stokes problem, at
batch 1 and 2, with gradcheck through both solves.
"""

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError
from femoe.experts import HardConstraintMoE
from femoe.experts._basis import owned_interior
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.layers._residuals import INITIAL
from femoe.reference import solve, solve_transient

F64 = torch.float64
DT, STEPS = 0.05, 4


def _navier_stokes(grid=8):
    from femoe.problems import get_problem

    return get_problem("navier_stokes_2d").build(grid=grid, n_steps=STEPS, T=0.5, lift="paper")


def _ns_params(pb, batch):
    iw, ip = pb.basis.split_indices()
    x = torch.as_tensor(pb.doflocs)
    state = torch.zeros(batch, pb.n, dtype=F64)
    for b in range(batch):
        state[b, iw] = torch.sin(2 * torch.pi * x[0, iw] + b) * torch.cos(2 * torch.pi * x[1, iw])
    state[:, ip] = state[:, iw] / (8 * torch.pi**2)
    return {"initial_state": state}


def _case(name, batch, make_square, make_heat, make_diffusion_sorption):
    """(problem, B, params, u0, dt, partition)"""
    g = torch.Generator().manual_seed(batch)
    if name == "steady":
        pb = make_square("poisson", 3, facets={"top": lambda u, v, w: u * v}, f=1.0)
        f = torch.linspace(0.5, 1.5, batch, dtype=F64)[:, None].expand(batch, pb.n).contiguous()
        return pb, torch.randn(batch, pb.n, 5, dtype=F64, generator=g), {"f": f}, None, None, "rcb"
    if name == "heat":
        pb = make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)), 5, facets={"right": lambda u, v, w: u * v},
                       theta=0.5, dirichlet={"left": 0.0})
        u0 = torch.stack([torch.sin(3 * torch.as_tensor(pb.doflocs[0]) + b) for b in range(batch)])
        params, dt, part = {}, DT, "slab"
    elif name == "ds":
        pb = make_diffusion_sorption(n_cells=24, n_saved=STEPS + 1)
        u0 = torch.full((batch, pb.n), 0.1, dtype=F64)
        params, dt, part = {}, 5.0, "slab"
    else:
        pb = _navier_stokes()
        params, dt, part = _ns_params(pb, batch), 0.5 / STEPS, "rcb"
        u0 = torch.zeros(batch, pb.n, dtype=F64)
    B = 0.3 * torch.randn(batch, STEPS + 1, pb.n, 4, dtype=F64, generator=g)
    if name == "ds":  # the sorption isotherm has a fractional power: keep the columns positive
        B = 0.1 * B
    if name in ("heat", "ds"):  # columns near the data: the corrections then have something to fit
        B = B + u0[:, None, :, None]
    return pb, B, params, u0, dt, part


def _layer(pb, dt, part, K=4, **kw):
    kw = {"dt": dt, **kw} if dt is not None else kw
    return HardConstraintMoE(pb, K, partition=part, coarse=True, rho=0.0, tol=1e-12, **kw)


def _objective(layer, u, params, u0):
    """``||r(u)||`` of the single solve's rows (the coarse layer's model) at a global field."""
    p = dict(params)
    if u0 is not None:
        p[INITIAL] = u0
    return torch.linalg.vector_norm(layer.coarse_layer.model.residual(u, p), dim=1)


NAMES = ["steady", "heat", "ds", "ns"]


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_experts_objectives_sum_to_the_global_one(name, batch, make_square, make_heat, make_diffusion_sorption):
    pb, B, params, u0, dt, part = _case(name, batch, make_square, make_heat, make_diffusion_sorption)
    layer = _layer(pb, dt, part)
    u, info = layer(B, params, u0) if u0 is not None else layer(B, params)
    assert info.all_converged and info.coarse.all_converged
    assert info.weights == ()
    glob = _objective(layer, u, params, u0)
    experts = info.residual_norms.square().sum(1).sqrt()
    torch.testing.assert_close(experts, glob, rtol=1e-9, atol=1e-12)
    # never above the coarse (single) solve, and the corrections do something
    u_c, _ = layer.coarse_layer(B, params, u0) if u0 is not None else layer.coarse_layer(B, params)
    coarse = _objective(layer, u_c, params, u0)
    assert bool((glob <= coarse * (1 + 1e-9)).all())
    assert bool((glob < (1 - 1e-6) * coarse).all()), (glob, coarse)


@pytest.mark.parametrize("name", NAMES)
def test_batch_of_two_equals_two_batches_of_one(name, make_square, make_heat, make_diffusion_sorption):
    pb, B, params, u0, dt, part = _case(name, 2, make_square, make_heat, make_diffusion_sorption)
    layer = _layer(pb, dt, part)
    u, _ = layer(B, params, u0) if u0 is not None else layer(B, params)
    for b in range(2):
        pb_ = {k: v[b:b + 1] for k, v in params.items()}
        ub, _ = layer(B[b:b + 1], pb_, u0[b:b + 1]) if u0 is not None else layer(B[b:b + 1], pb_)
        torch.testing.assert_close(ub[0], u[b], rtol=1e-9, atol=1e-11)


def test_corrections_vanish_outside_each_experts_interior(make_square):
    pb = make_square("poisson", 3, f=1.0)
    g = torch.Generator().manual_seed(3)
    B = torch.randn(1, pb.n, 5, dtype=F64, generator=g)
    layer = _layer(pb, None, "rcb")
    u, _ = layer(B)
    u_c, _ = layer.coarse_layer(B)
    inside = owned_interior(pb, layer.partition.owner)
    assert inside.any() and not inside.all()
    moved = (u - u_c).abs()[0].numpy() > 1e-12
    assert moved.any() and not moved[~inside].any()
    # every neighbour of an interior DOF has its owner
    pat = pb.pattern
    for i in np.nonzero(inside)[0]:
        nb = pat.indices[pat.indptr[i]:pat.indptr[i + 1]]
        assert (layer.partition.owner[nb] == layer.partition.owner[i]).all()


@pytest.mark.parametrize("K", [1, 2, 4])
def test_a_basis_holding_the_solution_gives_it_back(K, make_heat):
    pb = make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)), 5, facets={"right": lambda u, v, w: u * v},
                   theta=0.5, dirichlet={"left": "g"})
    x = pb.doflocs[0]
    u0 = 0.3 + 0.2 * np.sin(3 * x)
    params = {"g": torch.tensor(1.0, dtype=F64)}
    exact = torch.tensor(solve_transient(pb, u0, DT, STEPS, params)[1])
    g = torch.Generator().manual_seed(4)
    B = torch.cat([exact[..., None], torch.randn(STEPS + 1, pb.n, 3, dtype=F64, generator=g)], -1)[None]
    u, info = _layer(pb, DT, "slab", K)(B, params, torch.tensor(u0)[None])
    torch.testing.assert_close(u[0], exact, rtol=0, atol=1e-8)
    # the experts' corrections are zero up to round-off: each stops at its round-off floor (the
    # fixed field's terms set it, ResidualModel.row_magnitude), none stalls
    assert info.all_converged and not any(bool(li.stalled.any()) for li in info.lm)


def test_steady_solution_recovered(make_square):
    pb = make_square("unit_load", 3, facets={"top": lambda u, v, w: u * v})
    exact = torch.tensor(solve(pb, {})[0])
    g = torch.Generator().manual_seed(5)
    B = torch.cat([exact[:, None], torch.randn(pb.n, 3, dtype=F64, generator=g)], 1)[None]
    u, _ = _layer(pb, None, "rcb")(B)
    torch.testing.assert_close(u[0], exact, rtol=0, atol=1e-8)


def test_gradcheck_steady_basis_and_parameter(make_square):
    pb = make_square("nonlinear", 2, f=1.0)
    g = torch.Generator().manual_seed(6)
    layer = _layer(pb, None, "rcb", K=2, hessian="exact")
    B = (0.3 * torch.randn(2, pb.n, 3, dtype=F64, generator=g)).requires_grad_(True)
    f = torch.full((2, pb.n), 1.0, dtype=F64).requires_grad_(True)
    assert owned_interior(pb, layer.partition.owner).any()
    torch.autograd.gradcheck(lambda B, f: layer(B, {"f": f})[0], (B, f), atol=1e-6, rtol=1e-5)


def test_gradcheck_trajectory_basis_and_initial_state(make_heat):
    pb = make_heat(lambda u, v, w: dot((0.2 + u**2) * grad(u), grad(v)), 4, theta=0.5, dirichlet={"left": 0.0})
    g = torch.Generator().manual_seed(7)
    layer = _layer(pb, DT, "slab", K=2)
    B = (0.3 * torch.randn(1, 3, pb.n, 3, dtype=F64, generator=g)).requires_grad_(True)
    u0 = (0.5 + 0.1 * torch.randn(1, pb.n, dtype=F64, generator=g)).requires_grad_(True)
    torch.autograd.gradcheck(lambda B, u0: layer(B, {}, u0)[0], (B, u0), atol=1e-6, rtol=1e-5)


def test_options_and_errors(make_square):
    pb = make_square("poisson", 2, f=1.0)
    layer = _layer(pb, None, "rcb")
    assert layer.global_rows == frozenset() and "coarse=True" in repr(layer)
    assert HardConstraintMoE(pb, 4, partition="rcb").global_rows == {"boundary"} | {"initial"}
    with pytest.raises(ConfigError, match="two-level"):
        HardConstraintMoE(pb, 4, partition="rcb", coarse=True, devices=["cpu", "cpu"])


@pytest.mark.parametrize("steady", [False, True])
def test_training_through_two_level_experts(tmp_path, steady):
    """``[experts] coarse = true``: the config check asks for the stitched loss, the method's
    layer is two-level, and one loss's gradient reaches the network through both solves (it
    equals a central difference along a random direction of the network's parameters)."""
    from femoe.train.config import config_from_dict
    from femoe.train.methods import build_method
    from femoe.train.task import Task
    from femoe.train.trainer import loss_of

    problem = ({"name": "poisson_mms", "params": {"refine": 2, "nonlinear": True}} if steady else
               {"name": "diffusion_sorption_1d", "params": {"n_cells": 16, "n_saved": 5, "substeps": 8}})
    d = {"name": "tiny", "results": str(tmp_path / "results"), "methods": ["moe"], "problem": problem,
         "data": {"n_train": 4, "n_test": 2, "dir": str(tmp_path / "data")},
         "network": {"n_basis": 4, "width": 8, "depth": 2, "sensors": 1 if steady else 4},
         "experts": {"k": 2, "partition": "rcb" if steady else "slab", "coarse": True},
         "solver": {"tol": 1e-10}, "train": {"epochs": 1, "batch_size": 2}}
    with pytest.raises(ConfigError, match="stitched"):
        config_from_dict(d)
    d["experts"]["loss"] = "stitched"
    task = Task(config_from_dict(d))
    torch.manual_seed(0)
    m = build_method("moe", task)
    assert m.layer.coarse and m.layer.coarse_layer is not None
    m.train()
    inputs = task.train.inputs[:2]
    params = [q for q in m.parameters() if q.requires_grad]
    loss, _, _ = loss_of(task, m, inputs, None)
    grads = torch.autograd.grad(loss, params)
    g = torch.Generator().manual_seed(9)
    dirs = [torch.randn(q.shape, dtype=q.dtype, generator=g) for q in params]
    slope = sum(float((gq * dq).sum()) for gq, dq in zip(grads, dirs))
    eps = 1e-4  # the network is float32 (the layers run in float64); its loss curves strongly
    with torch.no_grad():
        vals = []
        for sign in (1, -1):
            for q, dq in zip(params, dirs):
                q.add_(sign * eps * dq)
            vals.append(float(loss_of(task, m, inputs, None)[0]))
            for q, dq in zip(params, dirs):
                q.sub_(sign * eps * dq)
    fd = (vals[0] - vals[1]) / (2 * eps)
    assert abs(slope) > 0 and abs(fd - slope) <= 5e-3 * abs(slope), (fd, slope)


def test_two_level_benchmark_script(tmp_path):
    """benchmarks/two_level.py on a trained smoke PI-HC: every variant is evaluated on the
    checkpoint, and at every test sample the two-level output's rows norm is at most PI-HC's."""
    import json
    import os
    import shlex
    import subprocess
    import sys
    from pathlib import Path

    from femoe.train.config import load_config
    from femoe.train.run import run

    root = Path(__file__).resolve().parents[1]
    smoke = root / "tests" / "configs" / "smoke_diffusion_sorption_1d.toml"
    cfg = load_config(smoke)
    cfg.methods = ["pihc"]
    cfg.results, cfg.data.dir = str(tmp_path / "results"), str(tmp_path / "data")
    run(cfg, isolate=False, progress=False)
    out = tmp_path / "two_level.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [str(smoke), "--k", "2", "3", "--results", str(tmp_path / "results"), "--set",
            f'data.dir="{tmp_path / "data"}"', "--out", str(out)]
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "two_level.py"), *args], cwd=root, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    doc = json.loads(out.read_text())
    # the recorded command reruns this one: the --set value keeps its TOML quotes through the shell
    assert shlex.split(doc["command"]) == ["OMP_NUM_THREADS=1", "python", "benchmarks/two_level.py", *args]
    assert set(doc["results"]) == {"pihc", "moe_k2", "two_level_k2", "moe_k3", "two_level_k3"}
    single = np.array(doc["results"]["pihc"]["rows_norm"])
    for k in (2, 3):
        assert np.all(np.array(doc["results"][f"two_level_k{k}"]["rows_norm"]) <= single * (1 + 1e-9))
        assert 0 < doc["results"][f"two_level_k{k}"]["rel_l2_mean"] < 10


@pytest.mark.parametrize("name", ["steady", "heat", "ns"])
def test_later_sweeps_never_raise_the_objective_and_cover_the_bands(name, make_square, make_heat,
                                                                    make_diffusion_sorption):
    """``sweeps = 2``: the second round corrects the first's output on a partition whose first
    expert's interior holds every DOF the first round left out; its objective is exactly its
    experts' sum, and it is at most the first round's."""
    pb, B, params, u0, dt, part = _case(name, 2, make_square, make_heat, make_diffusion_sorption)
    one = _layer(pb, dt, part)
    two = _layer(pb, dt, part, sweeps=2)
    args = (params, u0) if u0 is not None else (params,)
    u1, _ = one(B, *args)
    u2, info = two(B, *args)
    assert info.all_converged and len(info.rounds) == 1
    later = two.later_sweeps[0]
    assert later.coarse_layer is None  # it corrects the first round's output, with no solve of its own
    left_out = ~owned_interior(pb, one.partition.owner)
    assert owned_interior(pb, later.partition.owner)[left_out].all()
    r1, r2 = _objective(two, u1, params, u0), _objective(two, u2, params, u0)
    torch.testing.assert_close(info.rounds[0].residual_norms.square().sum(1).sqrt(), r2, rtol=1e-9, atol=1e-12)
    assert bool((r2 <= r1 * (1 + 1e-9)).all()) and bool((r2 < (1 - 1e-6) * r1).all())
    assert info.converged.shape[1] == one.K + later.K
    with pytest.raises(ConfigError, match="sweeps"):
        HardConstraintMoE(pb, 2, partition=part, sweeps=2, **({"dt": dt} if dt else {}))


def test_per_dof_initial_weights_and_rejected_options(make_heat):
    pb = make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)), 4, theta=0.5, dirichlet={"left": 0.0})
    g = torch.Generator().manual_seed(11)
    B = torch.randn(2, 3, pb.n, 3, dtype=F64, generator=g)
    u0 = torch.rand(2, pb.n, dtype=F64, generator=g)
    scalar = _layer(pb, DT, "slab", ic_weight=2.0)(B, {}, u0)[0]
    per_dof = _layer(pb, DT, "slab", ic_weight=torch.full((pb.n,), 2.0, dtype=F64))(B, {}, u0)[0]
    torch.testing.assert_close(per_dof, scalar, rtol=1e-10, atol=1e-12)
    # weights that differ by DOF: each expert must take its own DOFs' (the exact sum fails otherwise)
    c = 0.5 + torch.rand(pb.n, dtype=F64, generator=g)
    layer = _layer(pb, DT, "slab", ic_weight=c)
    u, info = layer(B, {}, u0)
    torch.testing.assert_close(info.residual_norms.square().sum(1).sqrt(), _objective(layer, u, {}, u0),
                               rtol=1e-9, atol=1e-12)
    for bad in ({"overlap": 1}, {"global_rows": "boundary"}):
        with pytest.raises(ConfigError, match="two-level"):
            _layer(pb, DT, "slab", **bad)


def test_a_failed_coarse_solve_marks_its_sample(make_square):
    pb = make_square("nonlinear", 3, f=1.0)
    g = torch.Generator().manual_seed(12)
    B = torch.randn(2, pb.n, 6, dtype=F64, generator=g)
    layer = HardConstraintMoE(pb, 4, partition="rcb", coarse=True)
    layer.coarse_layer = HardConstraint(pb, maxiter=1, tol=1e-14)  # only the coarse solve fails
    with pytest.warns(Warning):
        _, info = layer(B)
    assert not bool(info.coarse.converged.any())
    assert all(bool(i.converged.all()) for i in info.lm)  # every correction converged on its own
    assert not bool(info.converged.any())
