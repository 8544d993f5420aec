"""Temporal (and spatio-temporal) experts: :class:`femoe.experts.TimeWindows`."""

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError, ShapeError
from femoe.experts import HardConstraintMoE, TimeWindows, window_edges
from femoe.helpers import dot, grad
from femoe.layers import HardConstraint
from femoe.reference import solve_transient

F64 = torch.float64
DT, STEPS = 0.05, 6


@pytest.fixture
def heat(make_heat):
    """u_t = 0.05 u_xx + 0.3 u^2 ... (nonlinear source), implicit Euler; u = g on "left",
    outflow Robin on "right"."""
    return make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)) - 0.3 * u**2 * v, 4,
                     facets={"right": lambda u, v, w: u * v}, theta=1.0, dirichlet={"left": "g"})


def _case(problem, batch):
    x = problem.doflocs[0]
    u0 = np.stack([0.3 + 0.2 * np.sin((3 + b) * x) for b in range(batch)])
    g = torch.tensor([1.0, 0.7][:batch], dtype=F64)
    exact = np.stack([solve_transient(problem, u0[b], DT, STEPS, {"g": g[b:b + 1]})[1] for b in range(batch)])
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(batch, STEPS + 1, problem.n, 4, dtype=F64, generator=gen)
    B[..., 1] = torch.tensor(exact)
    return B, {"g": g}, torch.tensor(u0), torch.tensor(exact)


def test_window_edges():
    np.testing.assert_array_equal(window_edges(10, 3), [0, 3, 7, 10])
    np.testing.assert_array_equal(window_edges(4, 1), [0, 4])
    with pytest.raises(ConfigError, match="between 1 and the number of steps"):
        window_edges(4, 5)


def _layers(problem, K, windows, **opts):
    kw = {"dt": DT, "rho": 1e-14, "tol": 1e-13, **opts}
    if K == 0:  # PI-HC in each window
        return TimeWindows(lambda t0: HardConstraint(problem, t0=t0, **kw), STEPS, DT, windows)
    part = HardConstraintMoE(problem, K, partition="slab", **kw).partition
    return TimeWindows(lambda t0: HardConstraintMoE(problem, part, t0=t0, **kw), STEPS, DT, windows)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("K", [0, 1, 3])
@pytest.mark.parametrize("windows", [1, 2, 3])
def test_a_basis_holding_the_trajectory_gives_it_back_for_every_window_and_expert_count(heat, batch, K, windows):
    B, params, u0, exact = _case(heat, batch)
    u, info = _layers(heat, K, windows)(B, params, u0)
    assert info.all_converged and len(info.windows) == windows
    torch.testing.assert_close(u, exact, atol=1e-9, rtol=0)
    # each window starts from the previous one's last level
    for (a, _), start in zip(info.edges[1:], info.starts[1:]):
        torch.testing.assert_close(start, u[:, a])


@pytest.mark.parametrize("K", [0, 2])
def test_one_window_is_the_layer_itself(heat, K):
    B, params, u0, _ = _case(heat, 2)
    B = B + 0.1 * torch.randn(B.shape, dtype=F64, generator=torch.Generator().manual_seed(1))  # nothing exact
    kw = dict(dt=DT, tol=1e-12)
    plain = HardConstraint(heat, **kw) if K == 0 else HardConstraintMoE(heat, K, partition="slab", **kw)
    u1, _ = plain(B, params, u0)
    u2, _ = _layers(heat, K, 1, tol=1e-12, rho=1e-4)(B, params, u0)
    torch.testing.assert_close(u2, u1, rtol=1e-12, atol=1e-12)


def test_windows_are_marched_with_the_previous_window_as_initial_state(heat):
    """Window 2 alone, given window 1's last level as its initial state and t0, gives the same
    levels; and the windows fit the basis better than one weight vector over all levels."""
    B, params, u0, exact = _case(heat, 2)
    B = B[..., [0, 2, 3]]  # the exact trajectory is not in the span
    tw = _layers(heat, 0, 2, rho=1e-4, tol=1e-12)
    u, info = tw(B, params, u0)
    a = info.edges[1][0]
    second = HardConstraint(heat, dt=DT, t0=a * DT, rho=1e-4, tol=1e-12)
    u2, _ = second(B[:, a:], params, u[:, a])
    torch.testing.assert_close(u[:, a + 1:], u2[:, 1:], rtol=1e-10, atol=1e-12)


def test_a_shorter_trajectory_uses_the_windows_it_reaches(heat):
    B, params, u0, exact = _case(heat, 1)
    tw = _layers(heat, 0, 3)
    u, info = tw(B[:, :4], params, u0)  # levels 0..3: window 0 (0..2) and window 1 cut at 3
    assert u.shape == (1, 4, heat.n) and info.edges == ((0, 2), (2, 3))
    torch.testing.assert_close(u, exact[:, :4], atol=1e-9, rtol=0)
    with pytest.raises(ShapeError, match="levels"):
        tw(torch.zeros(1, STEPS + 2, heat.n, 4, dtype=F64), params, u0)


@pytest.mark.parametrize("state_column", [False, True])
def test_gradcheck_through_the_windows(make_heat, state_column):
    """Float64 gradcheck of the windows' output in the basis and the initial state; with a state
    column it carries a window's output into the next window's basis, and the gradient through
    it (to the earlier windows' basis and the initial state) is checked too."""
    problem = make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)) - 0.3 * u**2 * v, 2,
                        facets={"right": lambda u, v, w: u * v}, theta=1.0, dirichlet={"left": "g"})
    steps = 4
    part = HardConstraintMoE(problem, 2, partition="slab", dt=DT).partition
    tw = TimeWindows(lambda t0: HardConstraintMoE(problem, part, dt=DT, t0=t0, tol=1e-13, report=False), steps,
                     DT, 2, state_column=state_column)
    gen = torch.Generator().manual_seed(2)
    B = (0.3 * torch.randn(2, steps + 1, problem.n, 3, dtype=F64, generator=gen)).requires_grad_(True)
    u0 = (0.3 + 0.1 * torch.rand(2, problem.n, dtype=F64, generator=gen)).requires_grad_(True)
    params = {"g": torch.tensor([1.0, 0.8], dtype=F64)}
    assert torch.autograd.gradcheck(lambda B, u0: tw(B, params, u0)[0], (B, u0), fast_mode=True)


def test_femoe_run_trains_the_moe_with_time_windows(tmp_path):
    """The MoE method with ``experts.time_windows``: trains (its loss: every expert's weights of
    every window on the whole mesh) and evaluates, also when training stops at ``train_until``."""
    import json
    import math
    from pathlib import Path

    from femoe.train.config import load_config
    from femoe.train.run import run

    cfg = load_config(Path(__file__).resolve().parent / "configs" / "smoke_diffusion_sorption_1d.toml")
    cfg.methods = ["moe"]
    cfg.experts.time_windows = 2
    cfg.train.train_until = float(0.6 * cfg.problem.params.get("T", 500.0))
    cfg.results = str(tmp_path / "results")
    cfg.data.dir = str(tmp_path / "data")
    summary = run(cfg, progress=False, isolate=False)
    assert summary["errors"] == {}
    r = json.loads((cfg.run_dir / "metrics.json").read_text())["methods"]["moe"]
    assert math.isfinite(r["rel_l2_mean"]) and r["rel_l2_mean"] < 1.0
    assert math.isfinite(r["rel_l2_after_train_until_mean"])
    log = [json.loads(x) for x in (cfg.run_dir / "moe" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(x["loss"]) for x in log)


def test_time_windows_are_refused_where_they_do_not_apply(tmp_path):
    from pathlib import Path

    from femoe.train.config import load_config
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    cfg = load_config(Path(__file__).resolve().parent / "configs" / "smoke_darcy_2d.toml")
    cfg.data.dir = str(tmp_path / "data")
    cfg.experts.time_windows = 2
    with pytest.raises(ConfigError, match="time_windows applies to trajectories"):
        build_method("moe", Task(cfg))


def _steady(problem, g: float) -> np.ndarray:
    """The steady state of a linear problem with boundary data ``g``: one implicit Euler step of
    length 1e12 (its distance from the steady state is O(1e-12) relative)."""
    return solve_transient(problem, np.zeros(problem.n), 1e12, 1, {"g": torch.tensor([g], dtype=F64)})[1][-1]


@pytest.fixture
def diffusion(make_heat):
    """u_t = 0.05 u_xx, u = g on "left", Robin outflow on "right" (linear: a steady state)."""
    return make_heat(lambda u, v, w: 0.05 * dot(grad(u), grad(v)), 4, facets={"right": lambda u, v, w: u * v},
                     theta=1.0, dirichlet={"left": "g"})


def _state_layers(problem, K, windows, state_column, **opts):
    kw = {"dt": DT, "rho": 1e-14, "tol": 1e-13, **opts}
    if K == 0:
        return TimeWindows(lambda t0: HardConstraint(problem, t0=t0, **kw), STEPS, DT, windows,
                           state_column=state_column)
    part = HardConstraintMoE(problem, K, partition="slab", **kw).partition
    return TimeWindows(lambda t0: HardConstraintMoE(problem, part, t0=t0, **kw), STEPS, DT, windows,
                       state_column=state_column)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("K", [0, 3])
def test_a_state_column_gives_back_a_steady_trajectory_from_a_basis_that_cannot(diffusion, batch, K):
    """From a steady initial state the trajectory is that state at every level. The network's
    columns are random (the state is not in their span), so the windows alone miss it; with
    the state column every window gives it back exactly, for PI-HC and experts."""
    g = [1.0, 0.7][:batch]
    u0 = torch.tensor(np.stack([_steady(diffusion, gb) for gb in g]))
    params = {"g": torch.tensor(g, dtype=F64)}
    B = torch.randn(batch, STEPS + 1, diffusion.n, 3, dtype=F64, generator=torch.Generator().manual_seed(3))
    exact = u0[:, None].expand(-1, STEPS + 1, -1)
    u, info = _state_layers(diffusion, K, 3, True)(B, params, u0)
    assert info.all_converged
    torch.testing.assert_close(u, exact, atol=1e-9, rtol=0)
    u_plain, _ = _state_layers(diffusion, K, 3, False)(B, params, u0)
    assert float((u_plain - exact).abs().max()) > 1e-3


@pytest.mark.parametrize("K", [0, 2])
def test_each_window_solves_on_its_basis_with_its_initial_state_appended(heat, K):
    """Window 2 with the state column is the plain layer on ``[B, u(a) 1]`` from ``u(a)``."""
    B, params, u0, _ = _case(heat, 2)
    B = B[..., [0, 2, 3]]
    tw = _state_layers(heat, K, 2, True, rho=1e-4, tol=1e-12)
    u, info = tw(B, params, u0)
    a = info.edges[1][0]
    start = u[:, a]
    aug = torch.cat([B[:, a:], start[:, None, :, None].expand(-1, B.shape[1] - a, -1, 1)], -1)
    torch.testing.assert_close(tw.window_basis(B, a, STEPS, start), aug, rtol=0, atol=0)
    kw = dict(dt=DT, t0=a * DT, rho=1e-4, tol=1e-12)
    second = (HardConstraint(heat, **kw) if K == 0 else
              HardConstraintMoE(heat, tw.layers[1].partition, **kw))
    u2, _ = second(aug, params, start)
    torch.testing.assert_close(u[:, a + 1:], u2[:, 1:], rtol=1e-10, atol=1e-12)
    with pytest.raises(ShapeError, match="state column needs u0"):
        tw(B, params, u0[0])


def test_the_state_column_needs_windows(tmp_path):
    from pathlib import Path

    from femoe.train.config import load_config

    cfg = load_config(Path(__file__).resolve().parent / "configs" / "smoke_diffusion_sorption_1d.toml")
    d = cfg.to_dict()
    d["experts"]["state_column"] = True
    from femoe.train.config import config_from_dict

    with pytest.raises(ConfigError, match="state_column = true .* needs experts.time_windows > 1"):
        config_from_dict(d)
