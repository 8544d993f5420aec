"""Patch mode: exact local conservation on every expert's patch interior.

The network gives a field ``U_hat``. Each expert ``k`` solves the weak form on the interior of
its patch, ``R_i(u) = 0`` for ``i`` in ``I_k`` (its owned DOFs whose element star lies in its
own patch), with ``u = U_hat`` on the interface and ``u = g`` on Dirichlet DOFs. Interior DOFs of
different experts never share an element, so the Jacobian on ``I = union I_k`` is block
diagonal by expert: one Newton solve on ``I`` is the K independent expert solves, batched (the
linear solver factorises the blocks). The output is continuous, every interior row of the weak
form holds to the solver tolerance, and only interface rows carry residual, so training teaches
the network the interface.

Backward: the implicit function theorem, one adjoint solve with ``J_II^T`` reusing the
forward's factorisation (see :func:`femoe.layers.nonlinear_solve`); gradients reach ``U_hat``
(through the interface values and directly), the parameters and, for trajectories, the
previous level.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from femoe.errors import ProblemError, ShapeError
from femoe.layers import NewtonRoot, NewtonSolveInfo, NewtonSystem, Unconverged, implicit_root, newton_options
from femoe.layers._state import PATCH_FIXED, PATCH_OLD, parameters_only
from femoe.layers._validate import (NEWTON_REMEDY, check_finite, check_float_tensor, check_initial,
                                    check_params_finite, exclude_unconverged, expert_partition, parse_unconverged,
                                    report_unconverged, split_params)
from femoe.partition import ExpertPartition
from femoe.problem import Problem
from femoe.sparse import BatchedCSR, CSRPattern

#: Space-time patch systems from this many unknowns (per sample) are solved by blocks (the linear
#: solver ``"block_bidiagonal"``), smaller ones by one SuperLU factorisation. Patch-mode forward +
#: backward on diffusion-sorption, SuperLU / blocks: 0.74 at 1,464 unknowns (64 cells x 25
#: levels), 1.08 at 6,250 (128 x 51), 1.74 at 12,650 (256 x 51), 3.27 at 102,100 (1,024 x 101)
#: (``benchmarks/bench_block_bidiagonal.py``, ``benchmarks/results/block_bidiagonal.json``).
BLOCK_SOLVE_MIN = 10_000


@dataclass(frozen=True)
class PatchInfo:
    """What a patch-mode forward did (per sample; per step for trajectories, stacked on axis 1).

    ``residual_interior`` and ``residual_interface`` are 2-norms of the output's residual on
    interior rows (solved) and interface rows (Dirichlet rows excluded)."""

    converged: torch.Tensor
    iterations: torch.Tensor
    residual_interior: torch.Tensor
    residual_interface: torch.Tensor
    newton: tuple[NewtonSolveInfo, ...] = ()

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


class PatchConstraint(nn.Module):
    """Patch-mode constraint layer (exact local conservation on patch interiors).

    Parameters
    ----------
    problem : Problem
    experts : int or ExpertPartition
        Number of experts or a ready partition.
    partition, seed
        Partitioner (when ``experts`` is a number).
    dt, t0
        Time step and initial time of time-dependent problems.
    atol, rtol, maxiter, linear_solver, line_search, max_jacobian_age, **linear_opts
        Newton and linear-solver settings (see :func:`femoe.layers.nonlinear_solve`).
    unconverged, strict
        The unconverged-solve policy shared with :class:`~femoe.layers.HardConstraint`:
        ``"flag"`` (warn once per layer, see ``info.converged``), ``"exclude"`` (also detach the
        unconverged samples: no gradient from them) or ``"raise"`` (``strict=True``).
    time_solve : ``"auto"``, ``"space_time"`` or ``"levels"``
        Trajectories: ``"space_time"`` solves the interior rows of all steps as one system (the
        level-bidiagonal Jacobian factorised once per Newton step, by SuperLU or, from
        :data:`BLOCK_SOLVE_MIN` unknowns, level block by level block with ``linear_solver="auto"``;
        one adjoint solve backward); ``"levels"`` marches level by level, each step its own Newton
        solve given the constrained previous level (small per-level systems, dense Cholesky on a GPU). Both solve
        the same equations; the tolerances apply to the whole trajectory's interior residual or
        to each step's. ``"auto"``: space-time on the CPU (with it and the session's
        shared speed-ups a ``ds_cpu`` patch-mode training step went from 1.9-2.9 s to 0.4-0.5 s,
        ``benchmarks/ab_step.py``), levels elsewhere (a GPU has no sparse direct solver; iterating
        on the space-time system is not measured).
    """

    def __init__(self, problem: Problem, experts: int | ExpertPartition = 4, *, partition: str = "auto",
                 seed: int = 0, dt: float | None = None, t0: float = 0.0, atol: float = 1e-10,
                 rtol: float = 1e-10, maxiter: int = 50, linear_solver: str = "auto", line_search: bool = True,
                 strict: bool = False, time_solve: str = "auto", unconverged: str = "flag",
                 max_jacobian_age: int = 1, **linear_opts: Any):
        super().__init__()
        if time_solve not in ("auto", "space_time", "levels"):
            raise ProblemError(f"time_solve must be 'auto', 'space_time' or 'levels'; got {time_solve!r}")
        self.time_solve = time_solve
        if not isinstance(problem, Problem):
            raise ProblemError(f"problem must be a femoe.Problem; got {type(problem).__name__}")
        if problem.is_time_dependent and dt is None:
            raise ProblemError(f"problem {problem.name!r} is time-dependent: give the time step dt")
        self.problem, self.dt, self.t0 = problem, dt, t0
        self.unconverged = parse_unconverged(unconverged, strict)
        self.strict = self.unconverged is Unconverged.RAISE
        self._warned = False
        self.partition = expert_partition(experts, problem, partition, seed)
        self.K = self.partition.k
        interior = np.sort(np.concatenate(self.partition.interior)) if self.K else np.zeros(0, np.int64)
        if interior.size == 0:
            raise ProblemError("no patch has interior DOFs: use fewer experts or a finer mesh")
        self.interior = interior
        iface = np.zeros(problem.n, dtype=bool)
        iface[self.partition.interface] = True
        iface[problem.dirichlet_dofs] = False
        # index tensors as buffers: layer.to(device) moves them once, not every forward
        self.register_buffer("_interface", torch.as_tensor(np.nonzero(iface)[0]), persistent=False)
        self.register_buffer("_I", torch.as_tensor(interior), persistent=False)
        self.register_buffer("_D", torch.as_tensor(problem.dirichlet_dofs), persistent=False)
        # J_II: the sub-pattern and where its values sit in the full pattern
        pat = problem.pattern
        pos = sp.csr_matrix((np.arange(1, pat.nnz + 1, dtype=np.float64), pat.indices, pat.indptr), shape=pat.shape)
        sub = pos[interior][:, interior].tocsr()
        sub.sort_indices()
        self.sub_pattern = CSRPattern(sub.indptr.astype(np.int64), sub.indices.astype(np.int64), sub.shape)
        self.register_buffer("_sub_pos", torch.as_tensor(sub.data.astype(np.int64) - 1), persistent=False)
        if linear_solver == "block_bidiagonal":
            linear_opts = self._block_opts(linear_opts)
        self._opts = newton_options(atol, rtol, maxiter, linear_solver, line_search, linear_opts,
                                    max_jacobian_age=max_jacobian_age)
        # a patch that nothing anchors (no interface, no Dirichlet DOF: K = 1 on a pure Neumann
        # problem) is singular; checked on the first solve, the property is structural
        self._probes = problem.null_space_probes(interior)
        self._checked_singular = False
        self.last_info: PatchInfo | None = None

    def _block_opts(self, linear_opts: Mapping[str, Any], chosen: bool = False) -> dict:
        """``linear_opts`` for the solver ``"block_bidiagonal"``, by default with one level's interior
        unknowns as its block size (the space-time system's blocks, or a level's whole system on the
        level-by-level solve); where ``"auto"`` ``chosen`` it, only the options it takes (as
        :func:`femoe.linalg.make_solver`'s ``"auto"`` does)."""
        from femoe.linalg import SOLVERS

        if chosen:
            linear_opts = {k: v for k, v in linear_opts.items() if k in SOLVERS["block_bidiagonal"].options}
        return {"block_size": int(self.interior.size), **linear_opts}

    def extra_repr(self) -> str:
        return (f"problem={self.problem.name!r}, experts={self.K}, interior={self.interior.size}, "
                f"interface={int(self._interface.numel())}")

    # ------------------------------------------------------------------ one solve
    def _assemble(self, x: torch.Tensor, p: Mapping[str, Any], t) -> torch.Tensor:
        fixed = p[PATCH_FIXED]
        u = fixed.expand(x.shape[0], -1) if fixed.shape[0] != x.shape[0] else fixed
        if self._D.numel():
            g = self.problem.dirichlet_values(parameters_only(p), t=t, batch=u.shape[0], device=u.device,
                                              dtype=u.dtype)
            u = u.index_copy(1, self._D.to(u.device), g)
        return u.index_copy(1, self._I.to(u.device), x)

    def _solve(self, fixed: torch.Tensor, params: dict, t, u_old: torch.Tensor | None):
        pb, I = self.problem, self._I.to(fixed.device)
        user = dict(params)

        def res(x, p):
            u = self._assemble(x, p, t)
            if u_old is None:
                R = pb.residual(u, parameters_only(p), t=t)
            else:
                R = pb.step_residual(u, p[PATCH_OLD], self.dt, parameters_only(p), t_new=t)
            return R.reshape(-1, pb.n).index_select(1, I)

        def res_jac(x, p):
            u = self._assemble(x, p, t)
            if u_old is None:
                R, J = pb.residual_and_jacobian(u, parameters_only(p), t=t)
            else:
                R, J = pb.step_residual(u, p[PATCH_OLD], self.dt, parameters_only(p), t_new=t, jacobian=True)
            vals = J.values.index_select(1, self._sub_pos.to(J.values.device))
            return R.reshape(-1, pb.n).index_select(1, I), BatchedCSR(self.sub_pattern, vals)

        user[PATCH_FIXED] = fixed
        if u_old is not None:
            user[PATCH_OLD] = u_old
        names, tensors, static = split_params(user)
        info_out: list[NewtonSolveInfo] = []
        opts = self._opts
        if not self._checked_singular:
            opts = replace(opts, probes=self._probes, what=f"PatchConstraint on {pb.name!r}")
        system = NewtonSystem(res, res_jac, names, static, opts, info_out)
        x = implicit_root(NewtonRoot(system, fixed.detach().index_select(1, I)), *tensors)
        info = info_out[0]
        self._checked_singular = True
        self._report(info)
        return self._assemble(x, user, t), info

    # ------------------------------------------------------------------ space-time solve
    def _space_time_pattern(self, T: int) -> tuple[CSRPattern, torch.Tensor]:
        """The interior rows' Jacobian with respect to the interior values of levels ``1..T``
        (block row ``l``: ``(Q_l - P_l)_II`` at level ``l`` if ``l >= 1``, then ``P_{l+1, II}``), and
        where each entry sits in ``[(Q - P)_{0..T-1}, P_{1..T}]`` restricted to ``J_II`` (cached)."""
        cache = self.__dict__.setdefault("_st_cache", {})
        if T not in cache:
            sub = self.sub_pattern
            nI, snz = sub.shape[0], sub.nnz
            counts = np.diff(sub.indptr)
            indptr, indices, take = [0], [], []
            for lev in range(T):
                for a in range(nI):
                    ks = np.arange(sub.indptr[a], sub.indptr[a + 1])
                    if lev >= 1:
                        indices.append((lev - 1) * nI + sub.indices[ks])
                        take.append(lev * snz + ks)
                    indices.append(lev * nI + sub.indices[ks])
                    take.append(T * snz + lev * snz + ks)
                    indptr.append(indptr[-1] + counts[a] * (2 if lev >= 1 else 1))
            pattern = CSRPattern(np.asarray(indptr, dtype=np.int64), np.concatenate(indices).astype(np.int64),
                                 (T * nI, T * nI))
            cache[T] = (pattern, torch.as_tensor(np.concatenate(take)))
        return cache[T]

    def _solve_space_time(self, U_hat: torch.Tensor, params: dict, u0: torch.Tensor):
        """All steps' interior rows as one Newton solve (see ``time_solve``); returns the
        trajectory ``(batch, T + 1, n)`` with level 0 ``u0``."""
        pb, I = self.problem, self._I.to(U_hat.device)
        batch, T, nI = U_hat.shape[0], U_hat.shape[1] - 1, int(self._I.numel())
        pattern, take = self._space_time_pattern(T)
        take = take.to(U_hat.device)
        sub_pos = self._sub_pos.to(U_hat.device)

        def levels(x, p):  # (batch, T + 1, n): u0, then the fixed values with x on the interior
            fixed = p[PATCH_FIXED]
            U = fixed.expand(x.shape[0], -1, -1) if fixed.shape[0] != x.shape[0] else fixed
            if self._D.numel():
                g = torch.stack([pb.dirichlet_values(parameters_only(p), t=self.t0 + (lev + 1) * self.dt,
                                                     batch=U.shape[0], device=U.device, dtype=U.dtype)
                                 for lev in range(T)], 1)
                U = U.index_copy(2, self._D.to(U.device), g)
            U = U.index_copy(2, I, x.reshape(x.shape[0], T, nI))
            u_0 = p[PATCH_OLD].expand(U.shape[0], -1)
            return torch.cat([u_0.unsqueeze(1), U], dim=1)

        def res(x, p):
            U = levels(x, p)
            R = pb.trajectory_residual(U[:, 1:], U[:, 0], self.dt, parameters_only(p), t0=self.t0)
            return R.index_select(2, I).reshape(R.shape[0], T * nI)

        def res_jac(x, p):
            U = levels(x, p)
            R, P, Q = pb.trajectory_residual_and_jacobians(U, self.dt, parameters_only(p), t0=self.t0)
            b = R.shape[0]
            Pv = P.values.reshape(b, T + 1, -1).index_select(2, sub_pos)
            Qv = Q.values.reshape(b, T + 1, -1).index_select(2, sub_pos)
            V = torch.cat([(Qv[:, :-1] - Pv[:, :-1]).reshape(b, -1), Pv[:, 1:].reshape(b, -1)], dim=1)
            return R.index_select(2, I).reshape(b, T * nI), BatchedCSR(pattern, V.index_select(1, take))

        user = dict(params)
        user[PATCH_FIXED] = U_hat[:, 1:]
        user[PATCH_OLD] = u0
        names, tensors, static = split_params(user)
        info_out: list[NewtonSolveInfo] = []
        opts = self._opts
        if opts.linear_solver == "auto" and U_hat.device.type == "cpu":
            # the space-time Jacobian is block-bidiagonal and very sparse: "auto" would factorise it
            # densely up to 2000 unknowns (the default problem's 64 cells x 25 levels: 1,500). One
            # SuperLU of it fills its factors' off-diagonal blocks, so past BLOCK_SOLVE_MIN unknowns
            # the levels' blocks are factorised one by one (benchmarks/bench_block_bidiagonal.py)
            if T * nI >= BLOCK_SOLVE_MIN and T > 1:
                opts = replace(opts, linear_solver="block_bidiagonal",
                               linear_opts=self._block_opts(opts.linear_opts, chosen=True))
            else:
                opts = replace(opts, linear_solver="superlu")
        if not self._checked_singular:  # each step's block is J_II of that level: probe one level
            opts = replace(opts, what=f"PatchConstraint on {pb.name!r}")
            self._check_first_level(U_hat, params, u0)
        system = NewtonSystem(res, res_jac, names, static, opts, info_out)
        x0 = U_hat[:, 1:].detach().index_select(2, I).reshape(batch, T * nI)
        x = implicit_root(NewtonRoot(system, x0), *tensors)
        info = info_out[0]
        self._checked_singular = True
        self._report(info)
        return levels(x, user), info

    def _check_first_level(self, U_hat: torch.Tensor, params: dict, u0: torch.Tensor) -> None:
        """The singular-patch check of the level-by-level solve, on the first step's ``J_II``."""
        from femoe.linalg import check_nonsingular

        pb = self.problem
        with torch.no_grad():
            _, J = pb.step_residual(U_hat[:, 1].detach(), u0.detach(), self.dt, params, t_new=self.t0 + self.dt,
                                    jacobian=True)
            vals = J.values.index_select(1, self._sub_pos.to(J.values.device))
            check_nonsingular(BatchedCSR(self.sub_pattern, vals), *self._probes, f"PatchConstraint on {pb.name!r}")

    # ------------------------------------------------------------------ forward
    def forward(self, U_hat: torch.Tensor, params: Mapping[str, Any] | None = None,
                u0: torch.Tensor | None = None) -> tuple[torch.Tensor, PatchInfo]:
        """Constrain ``U_hat`` (``(batch, n)``, or ``(batch, T + 1, n)`` for trajectories).

        For trajectories level 0 is the initial condition ``u0`` (the network's level 0 is
        replaced), and level ``t`` is solved given the constrained level ``t - 1``.
        """
        check_float_tensor("U_hat", U_hat)
        pb = self.problem
        td = pb.is_time_dependent
        if U_hat.dim() != (3 if td else 2) or U_hat.shape[-1] != pb.n:
            shape = f"(batch, T + 1, {pb.n})" if td else f"(batch, {pb.n})"
            raise ShapeError(f"U_hat must have shape {shape}; received {tuple(U_hat.shape)}")
        check_finite("U_hat", U_hat)
        params = dict(params or {})
        check_params_finite(params)
        infos = []
        if not td:
            if u0 is not None:
                raise ProblemError(f"problem {pb.name!r} is steady: u0 does not apply")
            u, info = self._solve(U_hat, params, None, None)
            infos.append(info)
            R = pb.residual(u.detach(), params)
        else:
            if u0 is None:
                raise ProblemError(f"problem {pb.name!r} is time-dependent: give the initial condition u0")
            u0 = check_initial(u0, pb.n, U_hat.shape[0], U_hat.dtype)
            if self.time_solve == "space_time" or (self.time_solve == "auto" and U_hat.device.type == "cpu"):
                u, info = self._solve_space_time(U_hat, params, u0.expand(U_hat.shape[0], -1))
                infos = [info] * (U_hat.shape[1] - 1)  # one solve for every step
            else:
                levels = [u0.expand(U_hat.shape[0], -1)]
                for step in range(1, U_hat.shape[1]):
                    u_t, info = self._solve(U_hat[:, step], params, self.t0 + step * self.dt, levels[-1])
                    levels.append(u_t)
                    infos.append(info)
                u = torch.stack(levels, dim=1)
            R = pb.trajectory_residual(u[:, 1:].detach(), u[:, 0].detach(), self.dt, params, t0=self.t0)
        batch = U_hat.shape[0]
        with torch.no_grad():
            r_in = R.index_select(-1, self._I.to(R.device)).reshape(batch, -1)
            r_if = R.index_select(-1, self._interface.to(R.device)).reshape(batch, -1)
        conv = torch.stack([i.converged for i in infos], 1).expand(batch, -1)
        its = torch.stack([i.iterations for i in infos], 1).expand(batch, -1)
        info = PatchInfo(conv, its, torch.linalg.vector_norm(r_in, dim=1), torch.linalg.vector_norm(r_if, dim=1),
                         tuple(infos))
        self.last_info = info
        if self.unconverged is Unconverged.EXCLUDE:
            u = exclude_unconverged(u, conv)
        return u, info

    def _report(self, info: NewtonSolveInfo) -> None:
        if info.all_converged:
            return
        bad = ~info.converged
        msg = (f"PatchConstraint on {self.problem.name!r}: Newton did not converge for samples "
               f"{bad.nonzero().flatten().tolist()} (residual norms {info.residual_norms[bad].tolist()}, iterations "
               f"{info.iterations[bad].tolist()})")
        report_unconverged(self, msg, info, NEWTON_REMEDY)
