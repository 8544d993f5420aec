"""The MoE's "experts" loss (every expert's weights on the whole mesh) as one batched residual,
the K experts folded into the batch axis (issue 11): equal to the per-expert loop it replaces,
value and gradient, with and without time windows and an interface loss weight."""

import pytest
import torch

from femoe.train.config import config_from_dict


def _method(tmp_path, steady, **experts):
    from femoe.train.methods import build_method
    from femoe.train.task import Task

    problem = ({"name": "poisson_mms", "params": {"refine": 2, "nonlinear": True}} if steady else
               {"name": "diffusion_sorption_1d", "params": {"n_cells": 16, "n_saved": 5, "substeps": 8}})
    cfg = config_from_dict({
        "name": "tiny", "results": str(tmp_path / "results"), "methods": ["moe"], "problem": problem,
        "data": {"n_train": 4, "n_test": 2, "dir": str(tmp_path / "data")},
        "network": {"n_basis": 4, "width": 8, "depth": 2, "sensors": 1 if steady else 4},
        "experts": {"k": 3 if steady else 2, "partition": "rcb" if steady else "slab", **experts},
        "train": {"epochs": 1, "batch_size": 2},
    })
    task = Task(cfg)
    torch.manual_seed(0)  # the network's initialisation, whatever ran before in this process
    return task, build_method("moe", task)


def _loop_loss(m, r, params, u0):
    """The experts loss as it was: one residual call per expert and window."""
    t = m.task
    terms, weights = [], []
    for fields, a, start in m._expert_fields:
        init, t0 = (u0, 0.0) if start is None else (start, a * t.dt)
        for k in range(fields.shape[1]):
            rk = t.residual(fields[:, k], params, init, m.loss_dof_weight, t0=t0)
            terms.append(rk.square().mean())
            weights.append(1.0 if start is None else fields.shape[2] - 1)
    w = torch.tensor(weights, dtype=terms[0].dtype)
    experts = (torch.stack(terms) * w).sum() / w.sum()
    mode = t.cfg.experts.loss
    return experts if mode == "experts" else 0.5 * (experts + r.square().mean())


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("case", [
    dict(steady=False),
    dict(steady=False, interface_loss_weight=4.0),
    dict(steady=False, time_windows=2),
    dict(steady=False, time_windows=2, interface_loss_weight=4.0, loss="both"),
    dict(steady=False, time_windows=2, state_column=True),
    dict(steady=True),
    dict(steady=True, interface_loss_weight=4.0),
])
def test_batched_experts_loss_equals_the_per_expert_loop(tmp_path, batch, case):
    case = dict(case)
    steady = case.pop("steady")
    task, m = _method(tmp_path, steady, **{"loss": "experts", **case})
    m.train()
    inputs = task.train.inputs[:batch]
    u, _ = m(inputs)
    assert m._expert_fields is not None
    params, u0 = task.layer_args(inputs)
    r = task.residual(u, params, u0, m.loss_dof_weight)
    new = m.physics_loss(r, params, u0)
    ref = _loop_loss(m, r, params, u0)
    torch.testing.assert_close(new, ref, rtol=1e-12, atol=0)
    weights = [p for p in m.net.parameters() if p.requires_grad]
    g_new = torch.autograd.grad(new, weights, retain_graph=True)
    g_ref = torch.autograd.grad(ref, weights)
    for a, b in zip(g_new, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14 * float(b.abs().max()))


def _sliced_equals_whole_batch(layer, B, u0, model_cls, per, monkeypatch):
    """Run ``layer`` as it is (its LM's trials on the samples still active) and with the subsets
    switched off (``model_cls.sample_params`` -> None: every trial on the whole batch); assert equal
    iteration counts, fields and basis gradients, that the first run took sample subsets (batch
    element counts of ``model_cls.linearize`` below the batch's) and the second did not. Returns
    the first run's info."""
    batch = B.shape[0]

    def run():
        Bl = B.clone().requires_grad_(True)
        u, info = layer(Bl, None, u0)
        (gB,) = torch.autograd.grad((u * torch.linspace(0, 1, u.numel(), dtype=u.dtype).reshape(u.shape)).sum(), Bl)
        return u.detach(), info, gB

    calls = []
    original = model_cls.linearize

    def counted(self, u, Bf, p):
        calls.append(u.shape[0])
        return original(self, u, Bf, p)

    monkeypatch.setattr(model_cls, "linearize", counted)
    u, info, gB = run()
    assert any(c < batch * per for c in calls)  # trials took sample subsets
    monkeypatch.setattr(model_cls, "sample_params", lambda self, p, n: None)
    calls.clear()
    u_ref, info_ref, gB_ref = run()
    assert all(c == batch * per for c in calls)
    assert torch.equal(info.iterations, info_ref.iterations)
    torch.testing.assert_close(u, u_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gB, gB_ref, rtol=1e-9, atol=1e-9 * float(gB_ref.abs().max()))
    return info


@pytest.mark.parametrize("batch", [2, 3])
def test_lm_on_the_active_samples_only_equals_the_whole_batch(batch, monkeypatch, make_diffusion_sorption):
    """The MoE's LM evaluates a trial only on the samples with an active expert (the others are
    frozen), and forms the normal equations of its active experts only; the weights, field and
    gradient equal those of evaluating the whole batch."""
    from femoe.experts import HardConstraintMoE
    from femoe.experts._basis import _FoldedModel

    pb = make_diffusion_sorption(n_cells=16)
    g = torch.Generator().manual_seed(11)
    B = torch.randn(batch, 4, pb.n, 5, dtype=torch.float64, generator=g)
    B[1:] *= 3.0  # samples of different difficulty: they stop at different iterations
    u0 = torch.rand(batch, pb.n, dtype=torch.float64, generator=g)
    layer = HardConstraintMoE(pb, 3, partition="slab", dt=10.0, tol=1e-10)
    info = _sliced_equals_whole_batch(layer, B, u0, _FoldedModel, 3, monkeypatch)
    its = info.iterations.reshape(batch, -1)
    assert len(set(its.amax(1).tolist())) > 1  # the samples stop at different iterations
    # a sample's experts stop at different iterations, so trials evaluated inactive experts with
    # active ones (the normal equations of the active ones only)
    assert bool((its.amax(1) > its.amin(1)).any())


@pytest.mark.parametrize("batch", [2, 3])
def test_single_hard_constraint_lm_on_the_active_samples_only_equals_the_whole_batch(batch, monkeypatch,
                                                                                   make_diffusion_sorption):
    """PI-HC's LM also evaluates a trial only on the samples still active (a sample at the
    sorption kink may take 10x the iterations of the others): the weights, field, iteration counts
    and gradient equal those of evaluating the whole batch every time."""
    from femoe.layers import HardConstraint
    from femoe.layers._residuals import TrajectoryResidual

    pb = make_diffusion_sorption(n_cells=16)
    g = torch.Generator().manual_seed(12)  # random bases whose samples stop at different iterations
    B = torch.randn(batch, 4, pb.n, 5, dtype=torch.float64, generator=g)
    u0 = torch.rand(batch, pb.n, dtype=torch.float64, generator=g)
    info = _sliced_equals_whole_batch(HardConstraint(pb, dt=10.0, tol=1e-10), B, u0, TrajectoryResidual, 1,
                                      monkeypatch)
    assert len(set(info.iterations.tolist())) > 1


def test_consecutive_trials_on_one_subset_share_its_basis(monkeypatch, make_diffusion_sorption):
    """While the same samples stay active (the tail of a slow sample), the LM's trials hand the
    model the same sliced basis tensor, so the experts unfold it once per subset, not once per
    trial."""
    from femoe.experts import HardConstraintMoE
    from femoe.experts._basis import _ExpertGroup, _FoldedModel

    pb = make_diffusion_sorption(n_cells=16)
    g = torch.Generator().manual_seed(11)
    B = torch.randn(3, 4, pb.n, 5, dtype=torch.float64, generator=g)
    B[1:] *= 3.0
    u0 = torch.rand(3, pb.n, dtype=torch.float64, generator=g)
    bases, unfolds = [], []
    linearize, unfold = _FoldedModel.linearize, _ExpertGroup.unfold_basis

    def counted_linearize(self, u, Bf, p):
        bases.append(Bf)
        return linearize(self, u, Bf, p)

    def counted_unfold(self, Bf):
        unfolds.append(Bf)
        return unfold(self, Bf)

    monkeypatch.setattr(_FoldedModel, "linearize", counted_linearize)
    monkeypatch.setattr(_ExpertGroup, "unfold_basis", counted_unfold)
    with torch.no_grad():
        HardConstraintMoE(pb, 3, partition="slab", dt=10.0, tol=1e-10)(B, None, u0)
    sliced = [b for b in bases if b.shape[0] < B.shape[0] * 3]
    distinct = len({id(b) for b in sliced})
    assert len(sliced) > distinct >= 1  # several trials on one subset
    assert len(unfolds) == 1 + distinct  # the whole batch's basis, then each subset's once


def test_per_sample_initial_weights_keep_the_whole_batch(make_diffusion_sorption):
    """A layer given per-sample initial-row weights (ic_weight of shape (batch, n)) holds
    per-sample data outside the parameters: its LM's trials take the whole batch (a subset
    would not match the weights), for PI-HC and the MoE alike, and the samples still stop at
    different iterations."""
    from femoe.experts import HardConstraintMoE
    from femoe.layers import HardConstraint

    pb = make_diffusion_sorption(n_cells=16)
    g = torch.Generator().manual_seed(12)
    B = torch.randn(2, 4, pb.n, 5, dtype=torch.float64, generator=g)
    u0 = torch.rand(2, pb.n, dtype=torch.float64, generator=g)
    c = torch.rand(2, pb.n, dtype=torch.float64, generator=g) + 0.5
    for layer in (HardConstraint(pb, dt=10.0, tol=1e-10, ic_weight=c),
                  HardConstraintMoE(pb, 3, partition="slab", dt=10.0, tol=1e-10, ic_weight=c)):
        u, info = layer(B, None, u0)
        assert bool(info.converged.all()) and torch.isfinite(u).all()
        its = info.iterations.reshape(2, -1).amax(1)
        assert its[0] != its[1]
        # the same weights given per DOF for each sample alone: the batch's rows are each sample's
        for b in range(2):
            one = type(layer)(pb, *(() if isinstance(layer, HardConstraint) else (3,)),
                              **({} if isinstance(layer, HardConstraint) else {"partition": "slab"}),
                              dt=10.0, tol=1e-10, ic_weight=c[b])
            ub, _ = one(B[b:b + 1], None, u0[b:b + 1])
            torch.testing.assert_close(u[b:b + 1], ub, rtol=1e-9, atol=1e-11)
