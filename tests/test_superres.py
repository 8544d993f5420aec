"""Testing a trained network on another mesh of the same domain ([data] test_params): the
branch reads the test inputs at the training sensors' coordinates, the network moves unchanged,
and metrics of a lifted problem (u = u0 + s(t) z) are those of the state."""

from pathlib import Path

import numpy as np
import pytest
import torch

from femoe.errors import ConfigError
from femoe.train.config import config_from_dict
from femoe.train.task import Split, Task, interpolation_matrix, transfer_method


def _ns_config(tmp_path, **data):
    return config_from_dict({
        "name": "sr", "methods": ["soft"],
        "problem": {"name": "navier_stokes_2d", "params": {"grid": 4, "n_steps": 2, "T": 0.5, "lift": "paper"}},
        "data": {"n_train": 2, "n_test": 2, "dir": str(tmp_path / "coarse"), **data},
        "network": {"kind": "deeponet", "n_basis": 4, "width": 16, "depth": 2, "sensors": 16},
        "train": {"epochs": 1, "batch_size": 2},
    })


def test_interpolation_is_exact_at_nodes_and_for_linear_fields():
    # nested meshes: the coarse nodes are nodes of the fine periodic mesh, values are copied
    cfg = _ns_config(Path("/nonexistent"))
    cfg.problem.params["grid"] = 8
    fine = Task(cfg, load_data=False)
    iw = fine.problem.basis.split_indices()[0]
    fine.test = Split(torch.zeros(1, iw.size), torch.zeros(1))
    x = fine.problem.doflocs[:, iw]
    f = np.sin(2 * np.pi * x[0]) + np.cos(4 * np.pi * x[1])
    k = np.arange(4) / 4.0
    pts = np.stack(np.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)
    S = interpolation_matrix(fine, pts)
    np.testing.assert_allclose(S @ f, np.sin(2 * np.pi * pts[:, 0]) + np.cos(4 * np.pi * pts[:, 1]), atol=1e-12)
    assert S.nnz == len(pts)
    # points between nodes on an unstructured mesh: P1 interpolation reproduces a linear field
    darcy = Task(config_from_dict({"problem": {"name": "darcy_2d"}, "data": {"dir": "/nonexistent"}}),
                 load_data=False)
    darcy.test = Split(torch.zeros(1, darcy.n), torch.zeros(1))
    y = darcy.problem.doflocs
    g = 2.0 * y[0] - 3.0 * y[1] + 0.5
    q = np.array([[0.13, 0.07], [1.02, 0.21], [1.77, 0.93]])
    np.testing.assert_allclose(interpolation_matrix(darcy, q) @ g, 2.0 * q[:, 0] - 3.0 * q[:, 1] + 0.5, atol=1e-12)


def test_network_moves_to_the_finer_mesh_and_state_metrics(tmp_path):
    cfg = _ns_config(tmp_path, test_params={"grid": 8})
    coarse = Task(cfg)
    from femoe.train.methods import build_method

    torch.manual_seed(0)
    m = build_method("soft", coarse)
    fine = coarse.test_mesh_task()
    assert fine.n == 4 * coarse.n and np.allclose(fine.times, coarse.times)
    # the same initial vorticity reaches the branch on both meshes (nested nodes)
    torch.testing.assert_close(fine.branch_input(fine.test.inputs), coarse.branch_input(coarse.test.inputs))
    mf = transfer_method(m, fine)
    with torch.no_grad():
        zc = m(coarse.test.inputs)[0]
        zf = mf(fine.test.inputs)[0]
    # the network is one function of (x, t): equal at the DOFs both meshes share
    xc, xf = coarse.problem.doflocs.T, fine.problem.doflocs.T
    both = [(i, int(np.argmin(np.abs(xf - xc[i]).sum(1)))) for i in range(coarse.n)]
    iw_c = set(coarse.problem.basis.split_indices()[0].tolist())
    iw_f = set(fine.problem.basis.split_indices()[0].tolist())
    pairs = [(i, j) for i, j in both if (i in iw_c) == (j in iw_f)]
    ic, jf = map(list, zip(*pairs))
    torch.testing.assert_close(zf[..., jf], zc[..., ic], rtol=1e-5, atol=1e-6)
    # lifted metrics: the exact z gives zero error; level 0 of the state is the initial state
    ref = fine.test.solutions.double()
    s = torch.tensor(fine.times / fine.problem.config["T"])
    z = torch.zeros_like(ref)
    z[:, 1:] = (ref[:, 1:] - ref[:, :1]) / s[1:, None]
    assert float(fine.relative_l2(z, ref).max()) < 1e-12
    assert float(fine.relative_l2(torch.zeros_like(ref), ref).min()) > 1e-3  # z = 0: u stays u0
    torch.testing.assert_close(fine.state(z, ref)[:, 0], ref[:, 0], rtol=0, atol=0)


def test_test_params_refuses_other_time_levels(tmp_path):
    cfg = _ns_config(tmp_path, test_params={"n_steps": 3})
    with pytest.raises(ConfigError, match="time levels"):
        Task(cfg).test_mesh_task()


def test_best_in_span_of_a_lifted_problem_measures_the_state(tmp_path):
    """For u = u0 + s(t) z the basis spans z: a basis holding the exact z gives a best member
    0 % from the reference, and any basis does at least as well as u = u0 (w = 0)."""
    from femoe.train.methods import build_method

    task = Task(_ns_config(tmp_path))
    torch.manual_seed(0)
    m = build_method("pihc", task)
    inp, ref = task.test.inputs, task.test.solutions.double()
    s = torch.as_tensor(task.spec.lift_scale(task.problem, task.times[: ref.shape[1]]))
    z = torch.zeros_like(ref)
    z[:, 1:] = (ref[:, 1:] - ref[:, :1]) / s[1:, None]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(*ref.shape, 3, dtype=torch.float64, generator=g)
    m.network_output = lambda inputs, levels=None: torch.cat([z[..., None], noise], -1)
    assert float(m.best_in_span(inp, ref).max()) < 1e-8
    m.network_output = lambda inputs, levels=None: noise
    persistence = task.relative_l2(ref[:, :1].expand_as(ref).contiguous(), ref)
    assert bool((m.best_in_span(inp, ref) <= persistence + 1e-12).all())


def test_predictions_of_a_lifted_problem_are_the_state(tmp_path):
    """What goes to the plots and the XDMF file is u = u0 + s(t) z, not the unknown z: its
    level 0 is the initial state exactly, and its error is the reported error."""
    from femoe.train.methods import build_method
    from femoe.train.run import evaluate

    task = Task(_ns_config(tmp_path))
    torch.manual_seed(0)
    out = evaluate(task, build_method("soft", task))
    pred = torch.as_tensor(out["_predictions"])
    ref = task.test.solutions[: pred.shape[0]].double()
    torch.testing.assert_close(pred[:, 0], ref[:, 0])
    e = (pred[0] - ref[0]).numpy()
    r = ref[0].numpy()
    err = np.sqrt((e * (task.mass @ e.T).T).sum() / (r * (task.mass @ r.T).T).sum())
    assert err == pytest.approx(out["rel_l2"][0], rel=1e-10)
