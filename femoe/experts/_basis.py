"""PI-HC-MoE: the hard constraint in basis mode, one Levenberg-Marquardt problem per expert.

Every DOF has one owner expert. Expert ``k`` enforces, on its own field ``B w_k``:

- the residual rows of the DOFs it owns (Dirichlet rows ``u_i - g_i`` included; for
  trajectories every step's rows);
- with ``global_rows`` containing ``"boundary"`` (the default), the **global boundary rows**:
  every Dirichlet row and the rows of every DOF on a boundary facet that carries a facet
  (Neumann/Robin) term, at every step;
- with ``global_rows`` containing ``"initial"`` (the default, time-dependent problems), the
  **global initial-condition rows** ``c_i (U_0 - u0)_i`` at every DOF ``i`` (without it: only
  at the DOFs it owns).

Without the global rows an interior expert sees no boundary or initial data, so its rows do not
determine its field: any local solution of the PDE satisfies them (on a trained
diffusion-sorption basis the stitched field was 25.7 % from the reference against 8.5 % for
PI-HC; with the global rows 8.4 %). The paper's code gives every expert the global initial and
boundary conditions in the same way. Rows added by scikit-fem ``bilinear``/``linear`` forms are
not recognised as boundary rows (they are not tagged); express boundary terms as ``facets``.

Expert ``k``'s field lives on ``L_k``, the DOFs of the elements touching its rows (owned and
global boundary rows, whose element stars it contains completely), plus, for the global
initial rows, level 0 at every DOF (a pointwise row needs no element). All experts are solved
together: the experts are folded into the batch of one least-squares solve, and their residuals
come from one evaluation of the :class:`~femoe.problem.PatchUnion` of their element patches, so
the cost does not grow with the number of experts (the boundary patches add about the boundary
elements once per expert). The output takes each DOF from its owner's weights; as in the paper,
the stitched field jumps across expert interfaces, and the info record reports the jump and the
residual that remains on interface rows.

**Two-level experts** (``coarse=True``): one global solve first (the PI-HC layer on the same
basis, the coarse level, ``u_c = B w_c``), then every expert corrects it on the DOFs it owns
whose Jacobian neighbours it also owns (its *interior* ``I_k``): expert ``k``'s field is
``u_c + E_k B delta_k``, with ``E_k`` zeroing every DOF outside ``I_k``, and ``delta_k`` least-squares
its own rows (owned DOFs, every step, its initial rows). A row owned by ``k`` depends only on
DOFs adjacent to it, none of which lies in another expert's interior, so the experts' problems
are exactly the global one restricted to ``u_c + sum_k E_k B delta_k``, split by expert:

    sum_k 1/2 ||r_k(u_c + E_k B delta_k)||^2 = 1/2 ||r(u_c + sum_k E_k B delta_k)||^2

(with the layer's own row weights when they are diagonal, ``"mass"`` or an array; the block
``energy`` rows measure each expert's rows in its own block's dual norm, so for them the identity
and what follows are approximate). Since ``delta = 0`` gives ``u_c``, the stitched field's
objective is never above the single solve's (up to the ridge), the field is conforming (the
corrections vanish on every interface: no jump on any row's stencil) and the coarse solve
carries the domain-wide modes that local experts cannot see (the one-level experts' weakness on
elliptic problems). The coarse level is a second-level method in the sense of two-level Schwarz
methods (a global coarse problem, then independent local problems), here in the network's basis.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from femoe.errors import ConfigError, ProblemError, ShapeError
from femoe.layers._hard import HardConstraint
from femoe.layers._lm import Backward, LeastSquaresInfo, LMOptions, Unconverged, least_squares_solve
from femoe.layers._residuals import (INITIAL, ResidualModel, RowTransform, SteadyResidual, TimeIntegratedRows,
                                     TrajectoryResidual, basis_adjoint_parts, basis_field, block_csr_product,
                                     jac_times, rows_sample_params)
from femoe.layers._state import COARSE_FIELD
from femoe.layers._validate import (check_finite, check_float_tensor, check_initial, check_params_finite,
                                    exclude_unconverged, expert_partition, parse_unconverged, report_unconverged)
from femoe.partition import ExpertPartition
from femoe.problem import PatchUnion, Problem

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MoEInfo:
    """What a PI-HC-MoE forward did.

    Attributes
    ----------
    converged, iterations, residual_norms : torch.Tensor
        ``(batch, K)`` per sample and expert (from Levenberg-Marquardt): each (sample, expert)
        stops on its own and is frozen, so ``iterations`` is that expert's count.
    interface_jump : torch.Tensor
        ``(batch,)`` largest difference, over interface DOFs, between the owner's value and the
        value any other expert's field takes there (0 for ``K = 1``).
    residual_interior, residual_interface : torch.Tensor
        ``(batch,)`` 2-norms of the stitched field's residual on interior and on interface rows
        (Dirichlet rows excluded; all steps for trajectories).
    stalled, relative_gradient, weight_error : torch.Tensor, optional
        ``(batch, K)``: stopped without converging; ``||grad_w f|| / ||grad_w f(0)||``; the
        estimated relative error of the expert's weights (how far its gradient can be trusted;
        see :class:`~femoe.layers.LeastSquaresInfo`).
    lm : tuple of LeastSquaresInfo
        The records of the batched solves, one per expert group (batch element ``b K_g + k``).
    weights : tuple of (numpy.ndarray, torch.Tensor)
        Per expert group, its expert numbers and their weights ``(batch, K_g, N)``, differentiable
        (implicit gradient) like the output: ``B @ w[:, k]`` is expert ``k``'s field on the whole
        mesh (what training option ``experts.loss = "experts"`` puts in the loss). Empty for
        two-level experts, whose weights are corrections of the coarse field.
    coarse : LeastSquaresInfo, optional
        The coarse (global) solve of two-level experts (``coarse=True``); the other per-expert
        records are the experts' corrections, and ``converged`` is False for every expert of a
        sample whose coarse solve did not converge.
    rounds : tuple of MoEInfo
        Two-level experts with ``sweeps > 1``: the records of the later rounds (their experts'
        flags and counts are also appended, round after round, to the per-expert fields above,
        and the interface and residual reports are the last round's).
    """

    converged: torch.Tensor
    iterations: torch.Tensor
    residual_norms: torch.Tensor
    interface_jump: torch.Tensor
    residual_interior: torch.Tensor
    residual_interface: torch.Tensor
    stalled: torch.Tensor | None = None
    relative_gradient: torch.Tensor | None = None
    weight_error: torch.Tensor | None = None
    lm: tuple = ()
    weights: tuple = ()
    coarse: LeastSquaresInfo | None = None
    rounds: tuple = ()

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    @property
    def adjoint_residual(self) -> torch.Tensor:
        """``(batch, K)`` relative residual of each expert's adjoint solve in the last backward
        pass (NaN before one has run)."""
        batch = self.converged.shape[0]
        parts = [i.adjoint_residual.reshape(batch, -1) for i in self.lm]
        return torch.cat(parts, 1) if parts else self.converged.new_zeros(batch, 0, dtype=torch.float64)


GLOBAL_ROWS = ("none", "boundary", "initial", "boundary+initial")


def parse_global_rows(value: Any) -> frozenset:
    """``"boundary+initial"`` (default), ``"boundary"``, ``"initial"`` or ``"none"`` -> a set of
    ``{"boundary", "initial"}``."""
    if isinstance(value, str):
        if value.strip() == "none":
            return frozenset()
        parts = frozenset(p.strip() for p in value.split("+"))
        if parts <= {"boundary", "initial"}:
            return parts
    raise ConfigError(f"global_rows must be one of {list(GLOBAL_ROWS)}; got {value!r}")


def boundary_rows(problem: Problem) -> np.ndarray:
    """The global boundary rows: Dirichlet DOFs and the DOFs on the boundary facets of every
    facet (Neumann/Robin) term of ``problem`` (sorted global numbers)."""
    parts = [np.asarray(problem.dirichlet_dofs, dtype=np.int64)]
    for ft in getattr(problem, "_facets", ()):
        parts.append(np.asarray(problem.basis.get_dofs(problem._boundary(ft.tag)).all(), dtype=np.int64))
    return np.unique(np.concatenate(parts))


def grow(problem: Problem, dofs: np.ndarray, rings: int) -> np.ndarray:
    """``dofs`` and every DOF within ``rings`` steps of them in the Jacobian's graph (two DOFs
    are neighbours when they share an element), sorted."""
    out = np.asarray(dofs, dtype=np.int64)
    if rings <= 0:
        return np.unique(out)
    pat = problem.pattern
    for _ in range(int(rings)):
        nb = np.concatenate([pat.indices[pat.indptr[i]:pat.indptr[i + 1]] for i in out]) if out.size else out
        out = np.union1d(out, nb)
    return out


def owned_interior(problem: Problem, owner: np.ndarray) -> np.ndarray:
    """``(n,)`` bool: DOFs whose every Jacobian neighbour (a DOF sharing an element with it) has
    the same owner -- where a two-level expert's correction lives (see the module docstring)."""
    pat = problem.pattern
    rows = np.repeat(np.arange(pat.shape[0]), np.diff(pat.indptr))
    inside = np.ones(pat.shape[0], dtype=bool)
    inside[rows[owner[pat.indices] != owner[rows]]] = False
    return inside


class _ExpertGroup:
    """A group of experts folded into one batched least-squares problem (on one device).

    Folded layout of an expert's basis (and field): ``(batch K, [T + 1,] nl_max, N)`` -- the
    expert's patch DOFs, padded to the largest patch -- or, when the global initial rows are
    enforced, ``(batch K, (T + 1) nl_max + n, N)``: the patch levels flattened, then level 0 at
    every global DOF (see :meth:`split`).
    """

    def __init__(self, problem: Problem, part: ExpertPartition, experts: Sequence[int], dt, t0, ic_weight,
                 row_scale: Any = "mass", global_rows: frozenset = frozenset(), overlap: int = 0):
        self.problem = problem
        self.experts = np.asarray(experts, dtype=np.int64)
        ed = problem.basis.element_dofs
        owner = part.owner
        self.time_dependent = problem.is_time_dependent
        self.owned_global = [np.nonzero(owner == k)[0] for k in self.experts]
        extra = boundary_rows(problem) if "boundary" in global_rows else np.zeros(0, np.int64)
        # the rows each expert enforces: its own (grown by `overlap` rings of neighbouring DOFs),
        # and the global boundary rows
        self.rows_global = [np.union1d(grow(problem, o, overlap), extra) for o in self.owned_global]
        self.ic_global = self.time_dependent and "initial" in global_rows
        # elements touching the rows an expert enforces (their element stars are complete)
        touch = np.zeros(owner.size, dtype=np.int64)
        sets = []
        for rows in self.rows_global:
            touch[:] = 0
            touch[rows] = 1
            sets.append(np.nonzero(touch[ed].any(axis=0))[0])
        self.union: PatchUnion = problem.restrict(sets)
        u = self.union
        # whether this group's patches hold every DOF (all experts in one group do; a group of
        # some experts, on a device or a process of its own, may not): the global initial rows
        # then find level 0 of every DOF in the union (folded_structure)
        self.union_covers_all = bool(np.isin(np.arange(problem.n), u.union_to_global).all())
        self.K = len(self.experts)
        self.n_local = np.diff(u.offsets)
        self.nl_max = int(self.n_local.max())
        # union DOF -> folded position: expert k (its patch) and position j in its padded patch
        self.union_expert = torch.as_tensor(u.patch_of_dof, dtype=torch.int64)
        self.union_position = torch.as_tensor(np.arange(u.n) - u.offsets[u.patch_of_dof], dtype=torch.int64)
        # padded local DOFs (global numbers) for gathering B: (K, nl_max)
        pad = np.zeros((self.K, self.nl_max), dtype=np.int64)
        mask = np.zeros((self.K, self.nl_max), dtype=bool)
        for k, d in enumerate(u.local_dofs):
            pad[k, : d.size] = d
            mask[k, : d.size] = True
        self.local_pad = torch.as_tensor(pad)
        self.local_mask = torch.as_tensor(mask)
        # each expert's rows in union numbering, and where its owned DOFs sit in its local field
        self.rows_union = [np.searchsorted(d, r) + o for d, r, o in zip(u.local_dofs, self.rows_global, u.offsets)]
        self.owned_union = [np.searchsorted(d, r) + o for d, r, o in zip(u.local_dofs, self.owned_global, u.offsets)]
        own_pos = [np.searchsorted(d, r) for d, r in zip(u.local_dofs, self.owned_global)]
        # index tensors of owned_values and of the interface report, built once
        self.own_flat = torch.as_tensor(np.concatenate([k * self.nl_max + p for k, p in enumerate(own_pos)]))
        self.own_glob = torch.as_tensor(np.concatenate(self.owned_global))
        self.union_to_global = torch.as_tensor(u.union_to_global)
        if isinstance(row_scale, RowTransform):  # energy rows: one block per expert (additive Schwarz)
            row_scale = row_scale.for_experts(u, self.rows_union, self.rows_global)
        elif isinstance(row_scale, TimeIntegratedRows):
            row_scale = row_scale.for_experts(u.union_to_global)
        elif row_scale is not None and not isinstance(row_scale, str):
            row_scale = np.asarray(row_scale)[u.union_to_global]  # given on the parent's DOFs
        if self.time_dependent:
            if self.ic_global:
                # the union carries no initial rows: they come, at every global DOF, from level 0
                # of the global basis (see _FoldedModel); the weights are the parent's
                self.model = TrajectoryResidual(u, dt, t0, ic_rows=np.zeros(0, np.int64), ic_weight=1.0,
                                                row_scale=row_scale)
                self.ic_model = TrajectoryResidual(problem, dt, t0, ic_weight=ic_weight, row_scale=None)
            else:
                if not isinstance(ic_weight, str) and np.ndim(ic_weight) == 1:
                    ic_weight = u.gather(torch.as_tensor(ic_weight))  # per-DOF weights: the union's copy
                self.model = TrajectoryResidual(u, dt, t0, ic_weight=ic_weight, row_scale=row_scale)
        else:
            self.model = SteadyResidual(u, row_scale=row_scale)
        # index structures built once: row_index per T, folded_structure per T, _folded_rows per levels
        self._rows_cache: dict[Any, Any] = {}

    # ---------------------------------------------------------------- two-level experts
    def set_correction(self, inside: np.ndarray) -> None:
        """Where each expert's correction lives (two-level experts, which enforce no global
        rows): its owned DOFs flagged in ``inside`` (:func:`owned_interior`), on its padded patch."""
        mine = np.zeros((self.K, self.problem.n), dtype=bool)
        for k, own in enumerate(self.owned_global):
            mine[k, own[inside[own]]] = True
        self.corr_patch = torch.as_tensor(np.take_along_axis(mine, self.local_pad.numpy(), 1) & self.local_mask.numpy())

    def mask_correction(self, Bg: torch.Tensor) -> torch.Tensor:
        """A folded basis ``(batch K, [T+1,] nl_max, N)`` with every column zeroed outside its
        expert's correction DOFs."""
        lead = Bg.shape[1:-2]  # () or (T + 1,)
        m = self.corr_patch.to(device=Bg.device, dtype=Bg.dtype).reshape(self.K, *([1] * len(lead)), self.nl_max, 1)
        return (Bg.reshape(-1, self.K, *Bg.shape[1:]) * m).reshape(Bg.shape)

    def gather_field(self, u: torch.Tensor) -> torch.Tensor:
        """A global field ``(batch, [T+1,] n)`` -> folded, like :meth:`gather_basis`."""
        return self.gather_basis(u.unsqueeze(-1)).squeeze(-1)

    # ---------------------------------------------------------------- folding
    def _folded_rows(self, levels: int | None, device) -> tuple:
        """Where each row of the folded layout comes from in a global ``(batch, [levels,] n, N)``
        tensor, expert after expert: ``(level or None, DOF, padding rows)``, cached per ``levels``
        (the padded patch of every level, then, with global initial rows, level 0 at every DOF)."""
        key = ("gather", levels, str(device))
        if key not in self._rows_cache:
            pad, keep = self.local_pad.numpy(), self.local_mask.numpy()  # (K, nl_max)
            if levels is None:
                lev, dof, fill = None, pad.reshape(-1), ~keep.reshape(-1)
            else:
                shape = (self.K, levels, self.nl_max)
                lev = np.broadcast_to(np.arange(levels)[None, :, None], shape).reshape(self.K, -1)
                dof = np.broadcast_to(pad[:, None, :], shape).reshape(self.K, -1)
                fill = np.broadcast_to(~keep[:, None, :], shape).reshape(self.K, -1)
                if self.ic_global:
                    n = self.problem.n
                    lev = np.concatenate([lev, np.zeros((self.K, n), np.int64)], 1)
                    dof = np.concatenate([dof, np.broadcast_to(np.arange(n), (self.K, n))], 1)
                    fill = np.concatenate([fill, np.zeros((self.K, n), bool)], 1)
                lev, dof, fill = lev.reshape(-1), dof.reshape(-1), fill.reshape(-1)
            self._rows_cache[key] = (None if lev is None else torch.as_tensor(lev, device=device),
                                     torch.as_tensor(dof, device=device),
                                     torch.as_tensor(np.nonzero(fill)[0], device=device))
        return self._rows_cache[key]

    def gather_basis(self, B: torch.Tensor) -> torch.Tensor:
        """Global basis ``(batch, [T+1,] n, N)`` -> folded (see the class docstring), one gather
        (and its backward one scatter), zero in the padding."""
        levels = B.shape[1] if B.dim() == 4 else None
        lev, dof, fill = self._folded_rows(levels, B.device)
        out = _zero_padding(B[:, dof] if lev is None else B[:, lev, dof], 1, fill)  # (batch, K rows, N)
        out = out.reshape(B.shape[0] * self.K, -1, B.shape[-1])
        if levels is None or self.ic_global:
            return out
        return out.reshape(out.shape[0], levels, self.nl_max, B.shape[-1])

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A folded field ``(batch K, S)`` or basis ``(batch K, S, N)`` -> the patch part
        ``(batch K, [T+1,] nl_max[, N])`` and level 0 at every global DOF ``(batch K, n[, N])``
        (``None`` without global initial rows)."""
        if not self.ic_global:
            return x, None
        n = self.problem.n
        S = x.shape[1] - n
        patch = x[:, :S].reshape(x.shape[0], S // self.nl_max, self.nl_max, *x.shape[2:])
        return patch, x[:, S:]

    def _union_index(self, levels: int | None, device) -> tuple:
        """Advanced indices of the union's DOFs (of each of ``levels`` levels, for trajectories)
        in a folded tensor viewed as ``(batch, K, [levels,] nl_max, ...)``: :meth:`unfold` and
        :meth:`fold` are one gather or scatter each (the folded patch part is strided when the
        global initial rows follow it, so a gather through a flattened view would copy it first)."""
        k, j = self.union_expert.to(device), self.union_position.to(device)
        if levels is None:
            return k, j
        return k[None], torch.arange(levels, device=device)[:, None], j[None]

    def unfold(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Folded ``(batch K, [L,] nl_max, ...)`` -> union ``(batch, [L,] n_union, ...)``
        (``axis``: 1, or 2 for trajectories)."""
        y = x.reshape(-1, self.K, *x.shape[1:])
        return y[(slice(None), *self._union_index(x.shape[1] if axis == 2 else None, x.device))]

    def n_union_rows(self, T: int | None) -> int:
        """Length of the union model's residual vector."""
        n = self.union.n
        if T is None:
            return n
        return T * n + (0 if self.ic_global else n)

    def row_index(self, T: int | None, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded ``(K, m_max)`` indices into the union model's residual vector, and mask."""
        idx, mask, _ = self._row_slots(T, device)
        return idx, mask

    def _row_padding(self, T: int | None, device) -> torch.Tensor:
        """The padding slots of :meth:`row_index`, flattened over ``(K, m_max)``."""
        return self._row_slots(T, device)[2]

    def _row_slots(self, T: int | None, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`row_index`'s indices and mask and the padding slots (flattened: :meth:`fold_rows`
        zeroes them), built once per ``T`` and kept on each device they are asked on."""
        key = ("rows", T, str(torch.device(device)))
        if key not in self._rows_cache:
            cpu = ("rows", T, "cpu")
            if cpu not in self._rows_cache:
                n = self.union.n
                per = []
                for r, o in zip(self.rows_union, self.owned_union):
                    if T is None:
                        per.append(r)
                    else:
                        ic = [] if self.ic_global else [T * n + o]
                        per.append(np.concatenate([t * n + r for t in range(T)] + ic))
                m = max(p.size for p in per)
                idx = np.zeros((self.K, m), dtype=np.int64)
                mask = np.zeros((self.K, m), dtype=bool)
                for k, p in enumerate(per):
                    idx[k, : p.size] = p
                    mask[k, : p.size] = True
                self._rows_cache[cpu] = (torch.as_tensor(idx), torch.as_tensor(mask),
                                         torch.as_tensor(np.flatnonzero(~mask)))
            self._rows_cache[key] = tuple(t.to(device) for t in self._rows_cache[cpu])
        return self._rows_cache[key]

    def folded_structure(self, T: int) -> dict:
        """The folded experts' stacked Jacobian as one sparse matrix per sample (cached per ``T``):
        rows ``(k, s)``, expert ``k``'s row slots (:meth:`row_index`: its rows of the union model's
        stacked Jacobian, empty in the padding) and, with global initial rows, its ``n`` initial
        rows (one entry, ``c_i``, at a union copy of DOF ``i`` on level 0: ``c_i B_0[i]``); columns
        those of the union's stacked matrix. ``src`` indexes each entry's value in the union's
        stacked values followed by the ``n`` initial weights. Its product with the unfolded basis
        (:meth:`unfold_basis`) is ``J_w`` in the LM's layout, without a fold of the union's ``J_w``
        and a concatenation. The initial rows read another expert's patch copy of a DOF (every
        expert's basis is the same global basis gathered, :meth:`gather_basis`); where the union
        lacks DOFs (:attr:`union_covers_all` False: a group of some experts, on a device or process
        of its own) they read level 0 of every DOF, appended to the unfolded basis' columns."""
        key = ("folded", T)
        if key in self._rows_cache:
            return self._rows_cache[key]
        st = self.model._stacked_structure(T)
        indptr, cols = st["indptr"], st["cols"]
        idx, mask = (t.numpy() for t in self.row_index(T, "cpu"))
        n, u = self.problem.n, self.union
        n_cols = int(st["n_cols"])
        if self.union_covers_all:  # a union copy of each global DOF, on level 0
            level0 = np.empty(n, dtype=np.int64)
            level0[u.union_to_global[::-1]] = np.arange(u.n)[::-1]
        else:  # level 0 of every DOF, after the union's columns
            level0 = n_cols + np.arange(n)
        src, col, count = [], [], []
        for k in range(self.K):
            rk = idx[k, mask[k]]  # the expert's rows come first, the padding after them
            ck = indptr[rk + 1] - indptr[rk]
            ent = np.repeat(indptr[rk] - np.cumsum(ck) + ck, ck) + np.arange(ck.sum())
            cnt = np.zeros(idx.shape[1], dtype=np.int64)
            cnt[: rk.size] = ck
            src += [ent]
            col += [cols[ent]]
            count += [cnt]
            if self.ic_global:
                src += [cols.size + np.arange(n)]
                col += [level0]
                count += [np.ones(n, dtype=np.int64)]
        extra = n if self.ic_global and not self.union_covers_all else 0
        out = {"indptr": np.concatenate([[0], np.cumsum(np.concatenate(count))]), "cols": np.concatenate(col),
               "src": np.concatenate(src), "n_cols": n_cols + extra}
        self._rows_cache[key] = out
        return out

    def unfold_basis(self, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Bu, X)`` of a folded basis: the unfolded patch basis ``(batch, [L,] n_union, N)`` and
        the matrix whose rows the folded Jacobian's product reads (:meth:`folded_structure`): ``Bu``
        itself or, where the union lacks DOFs, ``Bu``'s rows then level 0 of every DOF,
        ``(batch, L n_union + n, N)``, from one gather (``Bu`` then a view of it)."""
        if not (self.ic_global and not self.union_covers_all):
            Bu = self.unfold(self.split(B)[0], 2 if self.time_dependent else 1)
            return Bu, Bu
        L = (B.shape[1] - self.problem.n) // self.nl_max
        key = ("unfold_basis", L, str(B.device))
        if key not in self._rows_cache:
            k, lev, j = self._union_index(L, B.device)
            n = self.problem.n
            expert = torch.cat([k.expand(L, -1).reshape(-1), torch.zeros(n, dtype=torch.int64, device=B.device)])
            row = torch.cat([(lev * self.nl_max + j).reshape(-1), L * self.nl_max + torch.arange(n, device=B.device)])
            self._rows_cache[key] = (expert, row)
        expert, row = self._rows_cache[key]
        X = B.reshape(-1, self.K, B.shape[1], B.shape[2])[:, expert, row]  # (batch, L n_union + n, N)
        return X[:, :L * self.union.n].reshape(X.shape[0], L, self.union.n, X.shape[-1]), X

    def fold(self, x: torch.Tensor, axis: int) -> torch.Tensor:
        """Inverse of :meth:`unfold`: union ``(batch, [L,] n_union, ...)`` -> folded
        ``(batch K, [L,] nl_max, ...)`` (zeros in the padding)."""
        lead = x.shape[1:axis]  # () or (L,)
        out = x.new_zeros(x.shape[0], self.K, *lead, self.nl_max, *x.shape[axis + 1:])
        out[(slice(None), *self._union_index(lead[0] if lead else None, x.device))] = x
        return out.reshape(-1, *out.shape[2:])

    def unfold_rows(self, r: torch.Tensor, T: int | None, n_rows: int) -> torch.Tensor:
        """Inverse of :meth:`fold_rows` for ``(batch K, m_max)``: union rows ``(batch, n_rows)``
        (zero on rows no expert enforces)."""
        idx, mask = self.row_index(T, r.device)
        r = r.reshape(-1, self.K * idx.shape[1])
        sel = mask.reshape(-1)
        return r.new_zeros(r.shape[0], n_rows).index_copy(1, idx.reshape(-1)[sel], r[:, sel])

    def fold_rows(self, r: torch.Tensor, T: int | None) -> torch.Tensor:
        """Union residual rows ``(batch, M[, N])`` -> per expert ``(batch K, m_max[, N])``."""
        idx, _ = self.row_index(T, r.device)
        out = _zero_padding(r.index_select(1, idx.reshape(-1)), 1, self._row_padding(T, r.device))
        return out.reshape(r.shape[0] * self.K, idx.shape[1], *r.shape[2:])

    def owned_values(self, u_fold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Global DOF indices owned by this group and the owners' values ``(batch, [T+1,] n_own)``
        (``u_fold`` is the patch part of a folded field)."""
        u = u_fold.reshape(-1, self.K, *u_fold.shape[1:])
        flat = u.movedim(1, -2).reshape(*u.shape[:1], *u.shape[2:-1], self.K * self.nl_max)
        return self.own_glob.to(u.device), flat.index_select(-1, self.own_flat.to(u.device))


def _zero_padding(x: torch.Tensor, axis: int, pad: torch.Tensor) -> torch.Tensor:
    """``x`` (a gather's own result, so written in place) with the entries ``pad`` of ``axis`` set
    to zero: the few padding rows of the folded layout, instead of a product of the whole tensor
    with a mask."""
    return x.index_fill_(axis, pad, 0) if pad.numel() else x


class _FoldedModel(ResidualModel):
    """The residual-model interface of :func:`least_squares_solve` for a folded expert group.

    Rows of expert ``k`` (one batch entry): its rows of the union's residual (:meth:`_ExpertGroup.
    row_index`), then, with global initial rows, ``c_i (U_0 - u0)_i`` at every global DOF ``i``,
    with the weights ``c`` of the parent problem's :class:`TrajectoryResidual`.
    """

    def __init__(self, group: _ExpertGroup):
        self.g = group
        self.time_dependent = group.time_dependent
        self.elements_per_sample = group.K  # batch element b K + k: one union evaluation per sample

    def sample_params(self, p: Mapping[str, Any], n_samples: int) -> frozenset | None:
        g = self.g
        holds = g.model.holds_samples() or (g.ic_global and g.ic_model.holds_samples())
        return rows_sample_params(g.problem, g.model.scale, p, n_samples, holds)

    def _T(self, u: torch.Tensor) -> int | None:
        return u.shape[1] - 1 if self.time_dependent else None

    def _p(self, p: Mapping[str, Any]) -> dict:
        p = dict(p)
        if INITIAL in p:  # the union model needs its own copy (no rows of it are enforced with ic_global)
            p[INITIAL] = self.g.union.gather(p[INITIAL])
        return p

    def _ic_weights(self, p: Mapping[str, Any], batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The global initial rows' weights ``c`` (a number or ``(batch K, n)``) and ``u0``
        ``(batch K, n)``, per (sample, expert), with the weights of the parent problem's
        :class:`TrajectoryResidual`."""
        g = self.g
        c = self._global_ic_weight(p)
        if c.dim():
            c = c.expand(batch, -1).repeat_interleave(g.K, 0)
        return c, p[INITIAL].expand(batch, -1).repeat_interleave(g.K, 0)

    def _global_ic_weight(self, p: Mapping[str, Any]) -> torch.Tensor:
        """The global initial rows' weights per sample: the parent problem's :class:`TrajectoryResidual`'s."""
        return self.g.ic_model._weights(p[INITIAL])

    def _ic(self, u0f: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        """Global initial rows ``c (U_0 - u0)`` per (sample, expert)."""
        c, u0 = self._ic_weights(p, u0f.shape[0] // self.g.K)
        return c * (u0f - u0)

    def residual(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        patch, u0f = self.g.split(u)
        axis = 2 if self.time_dependent else 1
        r = self.g.fold_rows(self.g.model.residual(self.g.unfold(patch, axis), self._p(p)), self._T(patch))
        if u0f is None:
            return r
        return torch.cat([r, self._ic(u0f, p)], dim=1)

    def row_magnitude(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor | None:
        """Per expert, its union rows' terms' magnitudes (the union model's, folded), then the
        global initial rows' ``|c| |U_0|``."""
        g = self.g
        patch, u0f = g.split(u)
        axis = 2 if self.time_dependent else 1
        mag = g.model.row_magnitude(g.unfold(patch, axis), self._p(p))
        if mag is None:
            return None
        mag = g.fold_rows(mag, self._T(patch))
        if u0f is None:
            return mag
        c, _ = self._ic_weights(p, u0f.shape[0] // g.K)
        return torch.cat([mag, abs(c) * u0f.abs()], dim=1)

    def forget(self) -> None:
        self.__dict__.pop("_last_basis", None)
        self.g.model.forget()

    def _unfolded_basis(self, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_ExpertGroup.unfold_basis` of a folded basis. It depends on ``B`` only, which a
        solve keeps fixed over its iterations: without gradients it is kept for the last ``B`` seen
        (the very tensor, unmodified)."""
        last = self.__dict__.get("_last_basis")
        if last is not None and last[0] is B and last[1] == B._version:
            return last[2]
        out = self.g.unfold_basis(B)
        if not (torch.is_grad_enabled() and B.requires_grad):
            self._last_basis = (B, B._version, out)
        return out

    def linearize(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any]):
        g = self.g
        patch, u0f = g.split(u)
        axis = 2 if self.time_dependent else 1
        Bu, X = self._unfolded_basis(B)
        T = self._T(patch)
        model = g.model
        if isinstance(model, TrajectoryResidual):
            r, P, Q, c = model.rows_and_linearization(g.unfold(patch, axis), self._p(p))
            cg = self._global_ic_weight(p) if g.ic_global else None
            if (not model.integrate and model.stacked_product_applies(P, Bu, c)
                    and not (torch.is_grad_enabled() and cg is not None and cg.requires_grad)):
                J = self._folded_jacobian(model._stacked_values(P.values, Q.values, c, r.shape[0], T), cg, X, T)
                r = g.fold_rows(r, T)
                return (r, J) if u0f is None else (torch.cat([r, self._ic(u0f, p)], dim=1), J)
            J = model.jacobian(P, Q, c, Bu)
        else:
            r, J = model.linearize(g.unfold(patch, axis), Bu, self._p(p))
        r, J = g.fold_rows(r, T), g.fold_rows(J, T)
        if u0f is None:
            return r, J
        c, _ = self._ic_weights(p, u0f.shape[0] // g.K)  # the initial rows' Jacobian c B_0
        Jic = (c.unsqueeze(-1) if c.dim() else c) * g.split(B)[1]
        return torch.cat([r, self._ic(u0f, p)], dim=1), torch.cat([J, Jic], dim=1)

    def _folded_jacobian(self, vals: torch.Tensor, cg: torch.Tensor | None, X: torch.Tensor, T: int) -> torch.Tensor:
        """``J_w`` ``(batch K, m_max [+ n], N)`` of every expert from the union's stacked values
        ``vals`` ``(batch, e)``, the global initial rows' weights ``cg`` and the unfolded basis ``X``
        (:meth:`_ExpertGroup.unfold_basis`), as one sparse product (:meth:`_ExpertGroup.folded_structure`)."""
        g = self.g
        st = g.folded_structure(T)
        batch, dev = vals.shape[0], vals.device
        key = ("src", str(dev))
        if key not in st:
            st[key] = torch.as_tensor(st["src"], device=dev)
        if cg is not None:
            vals = torch.cat([vals, cg.detach().to(vals.dtype).expand(batch, g.problem.n)], dim=1)
        J = block_csr_product(vals[:, st[key]], st["indptr"], st["cols"], st["n_cols"], X, st)
        return J.reshape(batch * g.K, -1, J.shape[-1])

    def prepare_curvature(self) -> None:
        self.g.model.prepare_curvature()

    def basis_adjoint(self, w: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any], r_star: torch.Tensor):
        """:meth:`TrajectoryResidual.basis_adjoint` for the folded experts (trajectories with
        global initial rows; ``None`` otherwise, and the backward differentiates the assembly).

        Each expert's rows are its union rows, whose Jacobian ``M_k`` is expert ``k``'s block of
        the union's stacked Jacobian (the patches are disjoint in the union), and the initial rows
        ``c (U_0 - u0)`` on the global level 0, whose Jacobian is ``diag(c)``; products with ``M``
        and ``M^T`` go through the union once for all experts (unfold, union product, fold)."""
        g = self.g
        if not (self.time_dependent and g.ic_global):
            return None
        model = g.model
        bK, _, N = B.shape
        K, nl = g.K, g.nl_max
        batch = bK // K
        with torch.no_grad():
            u = basis_field(B, w)
            patch, _ = g.split(u)
            L = patch.shape[1]
            T = L - 1
            p0, u0u = model._split(self._p(p))
            _, P, Q = model._linearization(model._embed(g.unfold(patch, 2), 2), p0)
            Mu, MTu, _, ncu = model._stacked_operator(P.values, Q.values, model._weights(u0u), batch, T)
            nrows = g.n_union_rows(T)
            m = g.row_index(T, B.device)[0].shape[1]
            c, _ = self._ic_weights(p, batch)

            def M(x):  # (bK, S) -> (bK, m + n): the union rows through the union, then c on level 0
                xu = g.unfold(x[:, :L * nl].reshape(bK, L, nl), 2).reshape(batch, ncu)
                return torch.cat([g.fold_rows(Mu(xu), T), c * x[:, L * nl:]], dim=1)

            def MT(y):  # (bK, m + n) -> (bK, S)
                xu = MTu(g.unfold_rows(y[:, :m], T, nrows))
                return torch.cat([g.fold(xu.reshape(batch, L, -1), 2).reshape(bK, -1), c * y[:, m:]], dim=1)

            HB = self._hessian_times_basis(u, B, p, r_star)
            if HB is not None:  # on the patch part, B's leading rows: the global initial rows are linear
                HB = HB.reshape(bK, -1, N)
        return basis_adjoint_parts(B.detach(), w, MT(r_star.detach()), M, MT, HB, B.shape)

    def curvature(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any], rbar: torch.Tensor) -> torch.Tensor:
        """Per expert ``B_k^T H_k B_k``: one Hessian of the union (block diagonal by expert),
        contracted with each expert's own basis. The global initial rows are linear in the
        field and add nothing."""
        HB = self._hessian_times_basis(u, B, p, rbar)
        N = B.shape[-1]
        if HB is None:
            return B.new_zeros(B.shape[0], N, N)
        Bk = self.g.split(B.detach())[0]
        return Bk.reshape(Bk.shape[0], -1, N).transpose(1, 2) @ HB.reshape(Bk.shape[0], -1, N)

    def _hessian_times_basis(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any],
                             rbar: torch.Tensor) -> torch.Tensor | None:
        """Per expert ``H_k B_k`` on its patch part, folded ``(batch K, [T+1,] nl_max, N)``: one
        Hessian of the union (block diagonal by expert) applied to the unfolded bases (``None``
        when the residual is linear in the field)."""
        g = self.g
        u, _ = g.split(u)
        T = self._T(u)
        axis = 2 if self.time_dependent else 1
        m = g.row_index(T, rbar.device)[0].shape[1]
        H = g.model.hessian_matrix(g.unfold(u, axis), self._p(p), g.unfold_rows(rbar[:, :m], T, g.n_union_rows(T)))
        if H is None:
            return None
        Bu = self._unfolded_basis(B)[0].detach()  # (batch, [L,] n_union, N): the solve's, where it is kept
        HB = jac_times(H, Bu.reshape(-1, g.union.n, B.shape[-1])).reshape(Bu.shape)
        return g.fold(HB, axis)


def _band_partition(problem: Problem, covered: np.ndarray) -> ExpertPartition | None:
    """The partition of a further sweep of two-level experts: expert 0 holds every element
    with a DOF within one ring of the DOFs ``covered`` leaves out (so those DOFs are in its
    interior), expert 1 the other elements; ``None`` when every DOF is covered."""
    from femoe.partition import ExpertPartition

    band = np.zeros(problem.n, dtype=bool)
    band[grow(problem, np.nonzero(~covered)[0], 1)] = True
    if not band.any():
        return None
    ed = np.asarray(problem.basis.element_dofs)
    element_part = np.where(band[ed].any(axis=0), 0, 1)
    if not (element_part == 1).any():
        element_part[:] = 0
    return ExpertPartition.from_basis(problem.basis, element_part, dirichlet=problem.dirichlet_dofs)


class _CorrectionModel(ResidualModel):
    """Two-level experts: the folded experts' rows at ``c + B w``, ``c`` the coarse field
    (global, ``(batch, [T+1,] n)``, under :data:`COARSE_FIELD` in the parameters, so that it receives
    a gradient like any parameter tensor) gathered to the folded layout."""

    def __init__(self, inner: _FoldedModel):
        self.inner = inner
        self.time_dependent = inner.time_dependent
        self.elements_per_sample = inner.elements_per_sample

    def _split(self, p: Mapping[str, Any]) -> tuple[dict, torch.Tensor]:
        q = dict(p)
        return q, self.inner.g.gather_field(q.pop(COARSE_FIELD))

    def sample_params(self, p: Mapping[str, Any], n_samples: int) -> frozenset | None:
        q = dict(p)
        c = q.pop(COARSE_FIELD)
        names = self.inner.sample_params(q, n_samples)
        if names is None or c.shape[0] != n_samples:
            return None
        return names | {COARSE_FIELD}

    def residual(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor:
        q, c = self._split(p)
        return self.inner.residual(u + c, q)

    @torch.no_grad()
    def zero_field_rows(self, B: torch.Tensor, p: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The rows and ``J_w`` at the zero field: the LM's tolerance and round-off scales, since
        ``w = 0`` already gives the coarse field, whose rows are near their optimum where the
        coarse solve converged."""
        q, c = self._split(p)
        return self.inner.linearize(torch.zeros_like(c), B, q)

    def linearize(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any]):
        q, c = self._split(p)
        return self.inner.linearize(u + c, B, q)

    def row_magnitude(self, u: torch.Tensor, p: Mapping[str, Any]) -> torch.Tensor | None:
        q, c = self._split(p)
        return self.inner.row_magnitude(u + c, q)

    def forget(self) -> None:
        self.inner.forget()

    def prepare_curvature(self) -> None:
        self.inner.prepare_curvature()

    def curvature(self, u: torch.Tensor, B: torch.Tensor, p: Mapping[str, Any], rbar: torch.Tensor):
        q, c = self._split(p)
        return self.inner.curvature(u + c, B, q, rbar)


class HardConstraintMoE(nn.Module):
    """PI-HC-MoE: the hard-constraint layer in basis mode with ``K`` experts.

    Parameters
    ----------
    problem : Problem
        The weak-form problem.
    experts : int or ExpertPartition
        Number of experts (the mesh is partitioned with ``partition``) or a ready partition.
    partition : str
        Partitioner name (``"auto"``, ``"metis"``, ``"rcb"``, ``"slab"``, ``"random"``).
    seed : int
        Seed of the random partitioner.
    devices : sequence of devices, optional
        Spread the experts over these devices (contiguous groups, one batched solve each).
    distributed : bool
        Under ``torch.distributed``: this rank solves only its share of the experts and the
        stitched field is summed over ranks (see :mod:`femoe.experts.distributed`).
    dt, t0, ic_weight, rho, tol, atol, maxiter, damping, hessian, hvp_chunk, backward, row_scale, patience
        As for :class:`~femoe.layers.HardConstraint` (same defaults; the stopping test is applied
        to every (sample, expert) on its own scale, and a stopped one is frozen).
    unconverged, strict
        As for :class:`~femoe.layers.HardConstraint`; with ``"exclude"`` a sample gives no
        gradient when any of its experts did not converge.
    global_rows : ``"boundary+initial"``, ``"boundary"``, ``"initial"``, ``"none"`` or None
        Rows every expert enforces in addition to its own (see the module docstring; None, the
        default: ``"boundary+initial"``, and ``"none"`` for two-level experts, whose coarse solve
        carries the boundary and initial data and whose corrections are constant on other
        experts' rows):
        ``"boundary"`` the Dirichlet rows and the rows of DOFs on boundary facets with a facet
        term, ``"initial"`` the initial-condition rows at every DOF (time-dependent problems).
        The default makes each expert's problem determine its field as the paper's code does;
        ``"none"`` is the earlier behaviour (own rows only: interior experts are then
        underdetermined), kept for comparison.
    report : bool
        Compute the interface jump and interface/interior residuals for the info record.
    overlap : int
        Each expert also enforces the rows of the DOFs within ``overlap`` rings of its own
        (overlapping experts, as in overlapping Schwarz methods): its weights then also fit the
        PDE just beyond its interface, which ties its field to its neighbours' where no global
        row does (a periodic problem has no boundary rows). The output still takes each DOF
        from its owner. 0: own rows only (and the global rows).
    coarse : bool
        Two-level experts (see the module docstring): a global least-squares solve on the same
        basis (a :class:`~femoe.layers.HardConstraint` with the same options) gives ``u_c``, then
        each expert corrects it on its interior DOFs. The output is conforming and its rows'
        objective (diagonal row weights) is at most the single solve's; a forward costs one PI-HC
        solve more than the one-level experts. The corrections mask the basis per DOF, so a
        relation the basis columns satisfy one by one (a field computed from the others by a
        linear solve) does not carry over to the output; the training methods compute such
        fields again from the output (``network.solve_algebraic``). Not with ``distributed=True`` or ``devices`` (the coarse solve would
        run on every rank).
    sweeps : int
        Two-level experts only: after the experts' corrections, ``sweeps - 1`` more rounds, each
        correcting the previous round's output on a new partition whose first expert holds the
        elements within one ring of the DOFs no interior of the previous round covered (the
        bands along the interfaces) and whose second holds the rest. Every round is exact in
        the same sense, so the rows' objective never rises from round to round
        (multiplicative Schwarz over the rounds).
    """

    #: two-level experts solve their coarse level themselves (a later round corrects a given field)
    _own_coarse_solve = True

    def __init__(self, problem: Problem, experts: int | ExpertPartition = 4, *, partition: str = "auto",
                 seed: int = 0, devices: Sequence[Any] | None = None, distributed: bool = False,
                 dt: float | None = None, t0: float = 0.0, ic_weight: Any = "paper", rho: float = 1e-4,
                 tol: float | None = None, atol: float = 0.0, maxiter: int = 100, damping: float = 1e-6,
                 hessian: str = "exact", hvp_chunk: int | None = None, backward: str = "implicit",
                 strict: bool = False, report: bool = True, row_scale: Any = "mass",
                 global_rows: str | None = None, unconverged: str = "flag", patience: int = 20,
                 overlap: int = 0, coarse: bool = False, sweeps: int = 1):
        super().__init__()
        if not isinstance(problem, Problem):
            raise ProblemError(f"problem must be a femoe.Problem; got {type(problem).__name__}")
        if problem.is_time_dependent and dt is None:
            raise ProblemError(f"problem {problem.name!r} is time-dependent: give the time step dt")
        self.problem = problem
        self.coarse = bool(coarse)
        if global_rows is None:
            global_rows = "none" if self.coarse else "boundary+initial"
        self.global_rows = parse_global_rows(global_rows)
        if self.coarse and (self.global_rows or overlap):
            raise ConfigError(f"coarse=True (two-level experts): each expert enforces exactly the rows it owns; global rows "
                              f"({global_rows!r}) or overlap ({overlap!r}) would add rows its correction cannot change, "
                              f"at a cost: leave global_rows=None and overlap=0")
        self.partition = expert_partition(experts, problem, partition, seed)
        K = self.partition.k
        self.K = K
        self.dt, self.t0 = dt, t0
        self.options = LMOptions(rho=rho, tol=tol, atol=atol, maxiter=maxiter, damping=damping, hessian=hessian,
                                 hvp_chunk=hvp_chunk, patience=patience)
        self.backward_mode = Backward.parse(backward, "backward")
        self.unconverged = parse_unconverged(unconverged, strict)
        self.strict = self.unconverged is Unconverged.RAISE
        self.report = bool(report)
        self._warned = False
        self.last_info: MoEInfo | None = None
        self.distributed = bool(distributed)
        ids = np.arange(K)
        if self.distributed:
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise ConfigError("distributed=True needs torch.distributed initialised (launch with torchrun and "
                                  "call femoe.experts.distributed.init())")
            rank, world = dist.get_rank(), dist.get_world_size()
            if world > K:
                raise ConfigError(f"{world} ranks but only {K} experts: use at least as many experts as ranks")
            ids = np.array_split(ids, world)[rank]
            self.devices = [None]
            chunks = [ids]
        else:
            self.devices = list(devices) if devices else [None]
            if len(self.devices) > K:
                raise ConfigError(f"{len(self.devices)} devices but only {K} experts")
            chunks = np.array_split(ids, len(self.devices))
        if int(overlap) != overlap or overlap < 0:
            raise ConfigError(f"overlap must be an integer >= 0 (rings of DOFs); got {overlap!r}")
        self.overlap = int(overlap)
        self.groups = [_ExpertGroup(problem, self.partition, c, dt, t0, ic_weight, row_scale, self.global_rows,
                                    self.overlap) for c in chunks]
        self._models = [_FoldedModel(g) for g in self.groups]
        self.coarse_layer = None
        # the options every solve of a two-level layer shares (its coarse solve, its later rounds)
        shared = dict(dt=dt, t0=t0, ic_weight=ic_weight, rho=rho, tol=tol, atol=atol, maxiter=maxiter, damping=damping,
                      hessian=hessian, hvp_chunk=hvp_chunk, backward=backward, row_scale=row_scale,
                      unconverged=unconverged, strict=strict, patience=patience)
        if self.coarse:
            if self.distributed or len(self.devices) > 1:
                raise ConfigError("coarse=True (two-level experts) runs on one process and device: drop "
                                  "distributed/devices or use one-level experts")
            if self._own_coarse_solve:
                self.coarse_layer = HardConstraint(problem, **shared)
            inside = owned_interior(problem, self.partition.owner)
            for g in self.groups:
                g.set_correction(inside)
            self._models = [_CorrectionModel(m) for m in self._models]
        if int(sweeps) != sweeps or sweeps < 1 or (sweeps > 1 and not self.coarse):
            raise ConfigError(f"sweeps must be an integer >= 1, and > 1 only with coarse=True; got {sweeps!r}")
        self.sweeps = int(sweeps)
        later = []
        if self.sweeps > 1:
            covered = inside
            for _ in range(self.sweeps - 1):
                part = _band_partition(problem, covered)
                if part is None:
                    break
                later.append(_LaterRound(problem, part, report=report, coarse=True, **shared))
                covered = owned_interior(problem, part.owner)
        self.later_sweeps = nn.ModuleList(later)
        if self.options.hessian.value == "exact" and self.backward_mode.value == "implicit":
            for m in self._models:
                m.prepare_curvature()
        iface = np.zeros(problem.n, dtype=bool)
        iface[self.partition.interface] = True
        iface[problem.dirichlet_dofs] = False
        # index tensors as buffers: layer.to(device) moves them once, not every forward
        self.register_buffer("_interface", torch.as_tensor(np.nonzero(iface)[0]), persistent=False)
        interior = np.ones(problem.n, dtype=bool)
        interior[self.partition.interface] = False
        interior[problem.dirichlet_dofs] = False
        self.register_buffer("_interior", torch.as_tensor(np.nonzero(interior)[0]), persistent=False)

    def extra_repr(self) -> str:
        return (f"problem={self.problem.name!r}, experts={self.K}, groups={len(self.groups)}, "
                f"interface={int(self._interface.numel())}, rho={self.options.rho}, tol={self.options.tol}, "
                f"global_rows={'+'.join(sorted(self.global_rows)) or 'none'}, overlap={self.overlap}, "
                f"coarse={self.coarse}")

    def forward(self, B: torch.Tensor, params: Mapping[str, Any] | None = None,
                u0: torch.Tensor | None = None, coarse_field: torch.Tensor | None = None) -> tuple[torch.Tensor, MoEInfo]:
        """Constrain the basis ``B`` (``(batch, n, N)`` or ``(batch, T + 1, n, N)``) expert by
        expert. Returns the stitched field ``(batch, n)`` or ``(batch, T + 1, n)`` and a
        :class:`MoEInfo`. ``coarse_field`` (two-level experts): the field to correct, of the
        output's shape, in place of the layer's own coarse solve."""
        check_float_tensor("B", B)
        n = self.problem.n
        td = self.problem.is_time_dependent
        want = 4 if td else 3
        if B.dim() != want or B.shape[-2] != n:
            shape = f"(batch, T + 1, {n}, N)" if td else f"(batch, {n}, N)"
            raise ShapeError(f"B must have shape {shape}; received {tuple(B.shape)}")
        check_finite("B", B)
        params = dict(params or {})
        check_params_finite(params)
        user_params = dict(params)
        coarse = None  # the record of this layer's own coarse solve
        if coarse_field is not None:
            if not self.coarse:
                raise ConfigError("coarse_field applies to two-level experts (coarse=True)")
            if coarse_field.shape != B.shape[:-1]:
                raise ShapeError(f"coarse_field must have shape {tuple(B.shape[:-1])}; received "
                                 f"{tuple(coarse_field.shape)}")
            check_finite("coarse_field", coarse_field)
            u_c = coarse_field
        elif self.coarse_layer is not None:  # the coarse level: one global solve on the same basis
            u_c, coarse = self.coarse_layer(B, params, u0) if td else self.coarse_layer(B, params)
        elif self.coarse:
            raise ProblemError("this two-level layer corrects a given field: pass coarse_field")
        if td:
            if u0 is None:
                raise ProblemError(f"problem {self.problem.name!r} is time-dependent: give the initial condition u0")
            params[INITIAL] = check_initial(u0, n, B.shape[0], B.dtype)
        elif u0 is not None:
            raise ProblemError(f"problem {self.problem.name!r} is steady: u0 does not apply")
        batch = B.shape[0]
        home = B.device
        u_out = B.new_zeros(B.shape[:-1])
        lms, folded_fields, weights = [], [], []
        for group, model, device in zip(self.groups, self._models, self.devices):
            dev = home if device is None else torch.device(device)
            Bg = group.gather_basis(B.to(dev))
            pg = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in params.items()}
            if self.coarse:  # corrections of u_c on each expert's interior
                Bg = group.mask_correction(Bg)
                pg[COARSE_FIELD] = u_c.to(dev)
            w, info = least_squares_solve(model, Bg, pg, self.options, self.backward_mode)
            field = basis_field(Bg, w)
            if self.coarse:
                field = field + group.gather_field(pg[COARSE_FIELD])
            u_fold, _ = group.split(field)  # (batch K, [T+1,] nl_max)
            glob, vals = group.owned_values(u_fold)
            u_out = u_out.index_copy(u_out.dim() - 1, glob.to(home), vals.to(home))
            folded_fields.append((group, u_fold))
            lms.append(info)
            if not self.coarse:
                weights.append((group.experts, w.reshape(batch, len(group.experts), -1).to(home)))
        if self.distributed:
            from femoe.experts.distributed import all_reduce_sum

            u_out = all_reduce_sum(u_out)

        def per_expert(name: str) -> torch.Tensor:  # (batch, K): the groups' records side by side
            return torch.cat([getattr(i, name).reshape(batch, -1).to(home) for i in lms], 1)

        conv = per_expert("converged")
        if coarse is not None:  # a sample whose coarse solve failed has no converged correction either
            conv = conv & coarse.converged.to(conv.device)[:, None]
        info = MoEInfo(conv, per_expert("iterations"), per_expert("residual_norms"),
                       *self._interface_report(u_out, folded_fields, params), stalled=per_expert("stalled"),
                       relative_gradient=per_expert("relative_gradient"), weight_error=per_expert("weight_error"),
                       lm=tuple(lms), weights=tuple(weights), coarse=coarse)
        if len(self.later_sweeps):  # further rounds, each correcting the previous round's output
            rounds = []
            for layer in self.later_sweeps:
                u_out, r = layer(B, user_params, u0, coarse_field=u_out)
                rounds.append(r)
            everyone = (info, *rounds)

            def side_by_side(name: str) -> torch.Tensor:
                return torch.cat([getattr(i, name) for i in everyone], 1)

            last = rounds[-1]
            info = replace(info, converged=side_by_side("converged"), iterations=side_by_side("iterations"),
                           residual_norms=side_by_side("residual_norms"), stalled=side_by_side("stalled"),
                           relative_gradient=side_by_side("relative_gradient"),
                           weight_error=side_by_side("weight_error"), interface_jump=last.interface_jump,
                           residual_interior=last.residual_interior, residual_interface=last.residual_interface,
                           lm=tuple(x for i in everyone for x in i.lm), rounds=tuple(rounds))
            conv = info.converged
        self.last_info = info
        self._report(info)
        if self.unconverged is Unconverged.EXCLUDE:
            ok = conv.all(1, keepdim=True)
            if self.distributed:  # a sample is excluded on every rank when one rank's expert failed
                from femoe.experts.distributed import all_reduce_max

                ok = all_reduce_max((~ok).to(u_out.dtype)) == 0
            u_out = exclude_unconverged(u_out, ok)
        return u_out, info

    @torch.no_grad()
    def _interface_report(self, u_out, folded, params) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``interface_jump``, ``residual_interior`` and ``residual_interface`` of :class:`MoEInfo`
        (zeros without ``report``)."""
        batch = u_out.shape[0]
        zero = u_out.new_zeros(batch)
        if not self.report:
            return zero, zero, zero
        jump = zero.clone()
        td = self.problem.is_time_dependent
        for group, u_fold in folded:
            axis = 2 if td else 1
            u_union = group.unfold(u_fold.detach(), axis)
            own = u_out.detach().to(u_union.device).index_select(-1, group.union_to_global.to(u_union.device))
            d = (u_union - own).abs().reshape(batch, -1)
            jump = torch.maximum(jump, d.amax(1).to(jump.device) if d.numel() else zero)
        if self.distributed:
            from femoe.experts.distributed import all_reduce_max

            jump = all_reduce_max(jump)
        p = {k: v for k, v in params.items() if k != INITIAL}
        u = u_out.detach()
        if td:
            R = self.problem.trajectory_residual(u[:, 1:], u[:, 0], self.dt, p, t0=self.t0)
        else:
            R = self.problem.residual(u, p)
        ifc = R.index_select(-1, self._interface.to(R.device)).reshape(batch, -1)
        inn = R.index_select(-1, self._interior.to(R.device)).reshape(batch, -1)
        return jump, torch.linalg.vector_norm(inn, dim=1), torch.linalg.vector_norm(ifc, dim=1)

    def _stall_summary(self, info: MoEInfo, mask: torch.Tensor) -> str:
        stalled, total = int(info.stalled[mask].sum()), int(mask.sum())
        maxed = f"reached maxiter={self.options.maxiter}"
        if stalled == total:
            return f"all {total} stalled"
        return f"{total} {maxed}" if stalled == 0 else f"{stalled} of {total} stalled, the others {maxed}"

    def _report(self, info: MoEInfo) -> None:
        if info.all_converged:
            return
        mask = ~info.converged
        bad = mask.nonzero().tolist()
        msg = (f"HardConstraintMoE on {self.problem.name!r}: Levenberg-Marquardt did not converge for "
               f"(sample, expert) {bad[:10]}{' ...' if len(bad) > 10 else ''} ({self._stall_summary(info, mask)}; "
               f"largest estimated relative weight error {float(info.weight_error[mask].max()):.2e})")
        report_unconverged(self, msg, info)


class _LaterRound(HardConstraintMoE):
    """A later round of two-level experts (``sweeps > 1``): corrects the field it is given
    (``coarse_field``), so it has no coarse solve of its own."""

    _own_coarse_solve = False
