"""The four ways of imposing the physics, behind one interface.

Each method owns a network (DeepONet or mesh GNN) and, except ``soft``, a constraint layer. It
maps a batch of inputs to a field ``(batch, [T+1,] n)`` and an info dict with the solver
record; the trainer puts the same physics-only loss (the mass-normalised weak-form residual of
that field, plus initial-condition rows) on every method's output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from femoe.errors import ConfigError
from femoe.nn import DeepONet, MeshGNN
from femoe.train.task import Task


def build_network(task: Task, n_outputs: int) -> nn.Module:
    nc = task.cfg.network
    lo, hi = task.bounds()
    if nc.kind == "deeponet":
        return DeepONet(len(task.sensors), len(lo), n_outputs, nc.width, nc.depth, fourier_scale=nc.fourier_scale,
                        lower=lo, upper=hi, seed=task.cfg.train.seed)
    g = task.graph()
    tb = (float(task.times[0]), float(task.times[-1])) if task.time_dependent else None
    return MeshGNN(torch.as_tensor(g.coords, dtype=torch.float32), g.edges, in_channels=task.node_channels(),
                   n_outputs=n_outputs * g.n_fields, width=nc.width, layers=nc.depth, time_bounds=tb,
                   period=g.period)


def run_network(net: nn.Module, task: Task, inputs: torch.Tensor, levels: int | None = None) -> torch.Tensor:
    """``(batch, [L,] task.n, outputs)`` in float64: ``net`` (a DeepONet or a mesh GNN built on
    ``task``'s mesh) evaluated at ``task``'s DOFs (and its first ``levels`` time levels)."""
    L = (levels or task.n_levels) if task.time_dependent else None
    if isinstance(net, DeepONet):
        out = net(task.branch_input(inputs), task.points(L).to(inputs.device))
        shape = (inputs.shape[0], L, task.n, -1) if L else (inputs.shape[0], task.n, -1)
        # the einsum's output is strided (levels and points outermost): one copy to float64 in
        # the (batch, [L,] n, N) layout the constraint layers read
        return out.reshape(shape).to(torch.float64, memory_format=torch.contiguous_format)
    a = task.node_input(inputs)
    if L:
        times = torch.as_tensor(task.times[:L], dtype=torch.float32, device=inputs.device)
        return task.graph().scatter(net(a, times)).double()
    return task.graph().scatter(net(a)).double()


class Method(nn.Module):
    """Network + (optional) constraint layer."""

    name = "method"
    basis_mode = False
    #: ``(n,)`` weights of each DOF's residual rows in the training loss (None: all 1)
    loss_dof_weight: torch.Tensor | None = None
    #: optimiser steps taken so far, set by the trainer before each step
    train_step = 0
    #: where the network runs when not on this task's mesh (:class:`~femoe.train.task.NetworkOnMesh`)
    network_mesh = None

    def __init__(self, task: Task):
        super().__init__()
        self.task = task
        self.net = build_network(task, task.cfg.network.n_basis if self.basis_mode else 1)
        self._points = None

    def physics_loss(self, r: torch.Tensor, params: dict, u0: torch.Tensor | None) -> torch.Tensor:
        """The training loss from the output's residual rows ``r`` (mean square)."""
        return r.square().mean()

    def load_network(self, checkpoint: str | Path) -> None:
        """Load the network weights of a checkpoint written by any method of the same config
        (the ``net.*`` entries of its model): e.g. PI-HC's single solve on the basis a MoE run
        trained. The constraint layer is left as it is."""
        state = torch.load(checkpoint, weights_only=False, map_location="cpu")["model"]
        self.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})

    def network_output(self, inputs: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """``(batch, [T+1,] n, N)`` in float64: the network's basis, its algebraic fields computed
        from the others with ``network.solve_algebraic`` (the task's
        :class:`~femoe.layers.AlgebraicFields`), then, for basis-mode methods with
        ``network.tendencies = m``, ``T m`` columns of the initial state's tendencies
        (:meth:`tendency_basis`; further passes: :meth:`PIHC.basis`)."""
        B = self._completed(self._network_output(inputs, levels))
        if self.basis_mode and self.task.cfg.network.tendencies:
            B = torch.cat([B, self.tendency_basis(inputs, B.shape[1])], dim=-1)
        return B

    def _completed(self, B: torch.Tensor) -> torch.Tensor:
        """``B`` with the fields an algebraic equation fixes computed from the others, if asked."""
        return B if self.task.algebraic is None else self.task.algebraic(B)

    def tendency_basis(self, inputs: torch.Tensor, levels: int, states: torch.Tensor | None = None) -> torch.Tensor:
        """The tendency columns of :meth:`Task.tendency_columns` (taken at ``states``; on the
        network's mesh when it runs on another, :class:`~femoe.train.task.NetworkOnMesh`),
        completed (the algebraic map acts column by column, so completing them apart from the
        network's columns gives the same basis)."""
        src = self.network_mesh if self.network_mesh is not None else self.task
        return self._completed(src.tendency_columns(inputs, levels, states).double())

    def _network_output(self, inputs: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        if self.network_mesh is not None:
            return self.network_mesh(self.net, inputs, levels)
        return run_network(self.net, self.task, inputs, levels)


class Soft(Method):
    name = "soft"

    def forward(self, inputs, levels=None):
        return self.network_output(inputs, levels)[..., 0], {}


class PIHC(Method):
    name = "pihc"
    basis_mode = True

    def __init__(self, task: Task):
        super().__init__(task)
        s = task.cfg.solver
        kw = dict(rho=s.rho, tol=s.tol, maxiter=s.maxiter, hessian=s.hessian,
                  row_scale=task.layer_row_scale(), unconverged=s.unconverged)
        if task.time_dependent:
            kw["dt"] = task.dt
        self._layer_kw = kw
        self.layer = self._make_layer(task, kw)

    def _make_layer(self, task: Task, kw):
        from femoe.layers import HardConstraint

        return HardConstraint(task.problem, **kw)

    def _constraint(self) -> nn.Module:
        """The layer this forward uses."""
        return self.layer

    def basis(self, inputs, levels=None):
        """``(B, u, info, iterations)``: the basis the last solve used, its solution, solver record
        and the LM iterations summed over the solves. With ``network.tendency_passes = p > 1`` the
        layer solves p times: after each solve every level's tendencies are taken again at the
        solution's previous level (a constant to the gradient); the network's columns are kept.
        With ``network.state_columns`` each level also gets that previous state as a column
        (:meth:`Task.state_columns`, on this task's mesh)."""
        t = self.task
        B = self.network_output(inputs, levels)
        params, u0 = t.layer_args(inputs)
        layer = self._constraint()
        iterations = 0.0
        passes = t.cfg.network.tendency_passes
        if passes > 1:  # the network's (completed) columns, ahead of the tendencies'
            net = B[..., :B.shape[-1] - (B.shape[1] - 1) * t.cfg.network.tendencies]
        u = None  # the previous pass's solution, from the second pass on
        for p in range(passes):
            if p:
                states = t.spec.state_from_lifted(t.problem, u.detach(), params["initial_state"],
                                                  t.times[:u.shape[1]]) if t.lifted else u.detach()
                cols = [net, self.tendency_basis(inputs, B.shape[1], states[:, :-1])]
                if t.cfg.network.state_columns:  # on this task's mesh: the rows' own
                    u_init = params["initial_state"] if t.lifted else None
                    cols.append(self._completed(t.state_columns(states[:, :-1], u_init)))
                B = torch.cat(cols, dim=-1)
            u, info = layer(B, params, u0) if u0 is not None else layer(B, params)
            u = self._after_layer(layer, u)
            iterations += float(info.iterations.float().mean())
        return B, u, info, iterations

    def _after_layer(self, layer, u: torch.Tensor) -> torch.Tensor:
        """The layer's output as the method returns it (the identity here)."""
        return u

    def forward(self, inputs, levels=None):
        B, u, info, iterations = self.basis(inputs, levels)
        return u, {"iterations": iterations,
                   "unconverged": int((~info.converged).sum()),
                   **self._extra(B, info)}

    def _extra(self, B: torch.Tensor, info) -> dict[str, Any]:
        """Entries of the step record beyond iterations and unconverged counts."""
        return {}

    @torch.no_grad()
    def best_in_span(self, inputs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Per sample, the relative error of the best member of span(B) against ``reference``:
        ``min_w ||B w - ref||_M / ||ref||_M`` (least squares in the mass norm, over all levels).

        What the constraint rows could reach with this basis at best: a test error far above it
        means the rows pick a poor member; close to it, the basis is the limit. (One ``w`` for the
        whole field, also for the MoE, whose experts could each pick their own.) For a lifted
        problem (``u = u0 + s(t) z``, the basis spans ``z``) the member is ``u0 + s(t) B w``.
        """
        t = self.task
        several = t.cfg.network.tendency_passes > 1  # the last pass's basis
        Bt = (self.basis(inputs)[0] if several else self.network_output(inputs)).double().cpu()  # (b, [L,] n, N)
        ref_t = reference.double().cpu()
        Bz = Bt.numpy()
        offset = np.zeros(())
        if t.lifted:
            # the basis spans z of u = u0 + s(t) z: fit the state, whose map from z is affine
            # (columns state(B_j) - state(0)); t.relative_l2 below maps the best z to its state
            s0 = t.state(torch.zeros_like(ref_t), ref_t)
            Bt = torch.stack([t.state(Bt[..., j].contiguous(), ref_t) - s0 for j in range(Bt.shape[-1])], -1)
            offset = s0.numpy()
        B = Bt.numpy()
        ref = ref_t.numpy()
        b, n, N = B.shape[0], t.n, B.shape[-1]
        Bf = B.reshape(b, -1, n, N)
        Bzf = Bz.reshape(b, -1, n, N)
        rf = (ref - offset).reshape(b, -1, n)
        out = []
        for s in range(b):
            X = Bf[s].transpose(1, 0, 2).reshape(n, -1)  # (n, L N)
            MX = (t.mass @ X).reshape(n, -1, N).transpose(1, 0, 2)  # (L, n, N)
            G = np.einsum("lin,lim->nm", Bf[s], MX)
            rhs = np.einsum("lin,li->n", MX, rf[s])
            w = np.linalg.lstsq(G, rhs, rcond=1e-13)[0]
            out.append(np.einsum("lin,n->li", Bzf[s], w))
        best = torch.as_tensor(np.stack(out).reshape(ref.shape))
        return t.relative_l2(best, torch.as_tensor(ref))


class MoE(PIHC):
    """PI-HC-MoE. Training options (``[experts]``; the layer and evaluation are unchanged):
    ``loss`` (what the physics loss is taken of: the stitched output, every expert's weights on
    the whole mesh, or both), ``interface_loss_weight`` (the rows at interface DOFs) and
    ``warm_start`` (the first steps through one whole-domain hard constraint, PI-HC)."""

    name = "moe"

    def __init__(self, task: Task):
        super().__init__(task)
        e = task.cfg.experts
        if e.interface_loss_weight != 1.0:
            w = torch.ones(task.n, dtype=torch.float64)
            part = self.layer.layers[0].partition if hasattr(self.layer, "layers") else self.layer.partition
            w[torch.from_numpy(np.array(part.interface, dtype=np.int64))] = \
                float(np.sqrt(e.interface_loss_weight))  # rows are squared in the loss
            self.loss_dof_weight = w
        self.single = PIHC._make_layer(self, task, self._layer_kw) if e.warm_start > 0 else None
        self._expert_fields = None

    def _make_layer(self, task: Task, kw):
        from femoe.experts import HardConstraintMoE, TimeWindows

        e = task.cfg.experts
        kw = {**kw, "overlap": e.overlap, "coarse": e.coarse, "sweeps": e.sweeps}
        if e.time_windows == 1:
            return HardConstraintMoE(task.problem, e.k, partition=e.partition, seed=e.seed, **kw)
        if not task.time_dependent or task.lifted:
            raise ConfigError("experts.time_windows applies to trajectories whose unknown is the state (not a "
                              "steady problem, not a lifted one: u = u0 + s(t) z spans the whole trajectory)")
        from femoe.partition import partition_experts

        # one partition for every window (built once; the windows' layers take it as it is)
        part = partition_experts(task.problem.basis, e.k, e.partition, dirichlet=task.problem.dirichlet_dofs,
                                 seed=e.seed)
        return TimeWindows(lambda t0: HardConstraintMoE(task.problem, part, t0=t0, **kw), task.n_levels - 1,
                           task.dt, e.time_windows, state_column=e.state_column)

    def _after_layer(self, layer, u: torch.Tensor) -> torch.Tensor:
        """Two-level experts mask the basis per DOF, so a field the basis computes from the others
        column by column (``network.solve_algebraic``: the streamfunction of Navier-Stokes) no
        longer solves its equation in the corrected output; it is computed again from the
        output's other fields (the map is linear; it first projects them onto the equation's
        solvability condition, e.g. the vorticity's zero mean), so it solves its equation
        exactly, as with PI-HC. The rows' objective is then no longer bounded by PI-HC's."""
        if self.task.algebraic is None or not self.task.cfg.experts.coarse or layer is self.single:
            return u
        return self.task.algebraic(u.unsqueeze(-1)).squeeze(-1)

    def _constraint(self) -> nn.Module:
        warm = self.single is not None and self.training and self.train_step < self.task.cfg.experts.warm_start
        return self.single if warm else self.layer

    def _extra(self, B, info):
        from femoe.experts import WindowsInfo

        self._expert_fields = None
        windowed = isinstance(info, WindowsInfo)
        if not windowed and not hasattr(info, "interface_jump"):  # the warm start's single solve
            return {"warm_start": True}
        parts = info.windows if windowed else (info,)
        spans = info.edges if windowed else ((0, None),)
        starts = info.starts if windowed else (None,)
        if self.training and self.task.cfg.experts.loss != "stitched":
            # every expert's weights on the whole mesh (per window: its levels), (batch, K, [L,] n),
            # with the window's first level and initial state
            self._expert_fields = []
            for part, (a, b), start in zip(parts, spans, starts):
                w = torch.cat([wg for _, wg in part.weights], 1)
                Bw = B if b is None else self.layer.window_basis(B, a, b, start)
                self._expert_fields.append((torch.einsum("b...N,bkN->bk...", Bw, w), a, start))
        return {"interface_jump": max(float(p.interface_jump.max()) for p in parts)}

    def physics_loss(self, r, params, u0):
        mode = self.task.cfg.experts.loss
        if self._expert_fields is None or mode == "stitched":
            return r.square().mean()
        t = self.task
        terms, weights = [], []
        for fields, a, start in self._expert_fields:
            init, t0 = (u0, 0.0) if start is None else (start, a * t.dt)
            terms.append(self._expert_terms(fields, params, init, t0))
            weights += [1.0 if start is None else fields.shape[2] - 1] * fields.shape[1]  # windows: by their steps
        w = torch.tensor(weights, dtype=terms[0].dtype, device=terms[0].device)
        experts = (torch.cat(terms) * w).sum() / w.sum()
        return experts if mode == "experts" else 0.5 * (experts + r.square().mean())

    def _expert_terms(self, fields, params, init, t0) -> torch.Tensor:
        """``(K,)`` mean squares of the residuals of the ``K`` experts' fields ``(batch, K, [L,] n)``:
        one batched residual with the experts folded into the batch axis (expert-major), each
        expert's mean over its own block of rows; equal to ``K`` residual calls to round-off."""
        t = self.task
        b, K = fields.shape[:2]
        folded = self._fold_params(params, b, K) if t.row_transform is None else None
        if folded is None:  # a row transform (energy rows) maps each sample's rows with its params: one call each
            return torch.stack([t.residual(fields[:, k], params, init, self.loss_dof_weight, t0=t0).square().mean()
                                for k in range(K)])
        u = fields.transpose(0, 1).reshape(K * b, *fields.shape[2:])
        ic = None if init is None else (init.repeat(K, 1) if init.dim() == 2 and init.shape[0] == b > 1 else init)
        rk = t.residual(u, folded, ic, self.loss_dof_weight, t0=t0)
        return rk.reshape(K, -1).square().mean(1)

    def _fold_params(self, params, b: int, K: int) -> dict | None:
        """``params`` of a batch of ``b`` samples for the expert-major batch of ``K b`` fields: the
        tensors that carry the sample axis (:func:`~femoe.layers._residuals.batched_param_names`,
        which the LM's sample subsets also use) repeated ``K`` times; None when one is not a
        parameter of the problem's forms (its sample axis is then unknown)."""
        from femoe.layers._residuals import batched_param_names

        names = batched_param_names(self.task.problem, params, b)
        if names is None:
            return None
        return {k: (v.repeat(K, *([1] * (v.dim() - 1))) if k in names else v) for k, v in params.items()}


class Patch(Method):
    name = "patch"

    def __init__(self, task: Task):
        super().__init__(task)
        self.layer = _patch_layer(task)

    def forward(self, inputs, levels=None):
        U = self.network_output(inputs, levels)[..., 0]
        params, u0 = self.task.layer_args(inputs)
        u, info = self.layer(U, params, u0) if u0 is not None else self.layer(U, params)
        return u, {"iterations": float(info.iterations.float().mean()), "unconverged": int((~info.converged).sum())}


def _patch_layer(task: Task):
    """Patch mode with the run's experts (``[experts]``) and solver (``solver.patch_rtol``)."""
    from femoe.experts import PatchConstraint

    e, s = task.cfg.experts, task.cfg.solver
    kw = {"dt": task.dt} if task.time_dependent else {}
    return PatchConstraint(task.problem, e.k, partition=e.partition, seed=e.seed, rtol=s.patch_rtol, atol=1e-12,
                           unconverged=s.unconverged, **kw)


class PIHCPatch(PIHC):
    """PI-HC, then patch mode on its field (``"pihc_patch"``).

    Trained exactly as PI-HC (same network, rows and loss: with the same seed its network is
    PI-HC's). At evaluation the PI-HC field ``u_hc = B w*`` is the patch layer's input: each
    expert solves the weak form exactly on its patch interior with ``u_hc``'s values on the
    interface. For a linear symmetric problem (Darcy) the error of the result is the discrete
    harmonic extension of ``u_hc``'s interface error, which has the least energy of all fields
    with those interface values, so its energy error is at most PI-HC's; for a trajectory
    (diffusion-sorption) the patch interiors of every level are solved given the corrected
    previous level (patch mode's ``time_solve``). The gradient of the training loss does not
    pass through the patch solve.
    """

    name = "pihc_patch"

    def __init__(self, task: Task):
        super().__init__(task)
        self.patch = _patch_layer(task)

    def forward(self, inputs, levels=None):
        u, info = super().forward(inputs, levels)
        if self.training:
            return u, info
        params, u0 = self.task.layer_args(inputs)
        u, pinfo = self.patch(u, params, u0) if u0 is not None else self.patch(u, params)
        return u, {**info, "patch_iterations": float(pinfo.iterations.float().mean()),
                   "unconverged": info["unconverged"] + int((~pinfo.converged).sum())}


METHOD_CLASSES = {"soft": Soft, "pihc": PIHC, "moe": MoE, "patch": Patch, "pihc_patch": PIHCPatch}


def build_method(name: str, task: Task) -> Method:
    if name not in METHOD_CLASSES:
        raise ConfigError(f"unknown method {name!r}; choose one of {list(METHOD_CLASSES)}")
    return METHOD_CLASSES[name](task)
