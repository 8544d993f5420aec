"""A learning task: the problem, its data, the network's points and the metrics' norms."""

from __future__ import annotations

import copy
import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import skfem as fe
import torch
from scipy.spatial import cKDTree
from skfem.mesh.mesh_dg import MeshDG

from femoe.errors import CheckpointError, ConfigError, DataError
from femoe.train.config import Config

log = logging.getLogger(__name__)


def mesh_fingerprint(problem) -> str:
    """Hash of the mesh and the DOF count: checkpoints refuse a different mesh."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(problem.mesh.p, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(problem.mesh.t, dtype=np.int64).tobytes())
    h.update(str(problem.n).encode())
    return h.hexdigest()[:16]


def _first_field_mass(basis, n_fields: int):
    """Mass matrix of the (first) field: errors of mixed problems are measured on it (the
    vorticity of Navier-Stokes, as in the paper)."""
    if n_fields == 1:
        return fe.BilinearForm(lambda u, v, w: u * v).assemble(basis)
    if n_fields == 2:
        return fe.BilinearForm(lambda u, p, v, q, w: u * v).assemble(basis)
    raise ConfigError("metrics support one- and two-field spaces")


@dataclass
class Split:
    inputs: torch.Tensor  # (S, m) the input function (initial condition or coefficient field)
    solutions: torch.Tensor  # (S, [T+1,] n) reference solutions


class Task:
    """Everything a method needs that does not depend on the method.

    Time-dependent problems: the input is the initial condition (its full DOF vector); the
    network is evaluated at space-time points ``(x, t)`` of levels ``0..T``. Steady problems:
    the input is the coefficient field named by the problem spec (``input_param``, default
    ``"kappa"``), passed to the layers as a parameter.
    """

    def __init__(self, cfg: Config, *, load_data: bool = True):
        from femoe.problems import get_problem

        self.cfg = cfg
        self.spec = get_problem(cfg.problem.name)
        self.problem = self.spec.build(**cfg.problem.params)
        self.n = self.problem.n
        self.time_dependent = self.problem.is_time_dependent
        self.fingerprint = mesh_fingerprint(self.problem)
        basis = self.problem.basis
        self.mass = sp.csr_matrix(_first_field_mass(basis, len(self.problem._tb.layouts)))
        from femoe.train.rows import energy_rows, row_weights

        # the layers' row weights, also used by every method's loss (solver.row_weights); "energy"
        # rows are a transform (a triangular solve), not weights
        if cfg.solver.row_weights in ("energy", "energy_sample"):
            self.row_transform = energy_rows(self.problem, cfg.solver.dirichlet_weight,
                                             per_sample=cfg.solver.row_weights == "energy_sample")
            self.row_scale = torch.ones(self.n, dtype=torch.float64)
        else:
            self.row_transform = None
            self.row_scale = torch.as_tensor(row_weights(self.problem, cfg.solver.row_weights,
                                                         cfg.solver.dirichlet_weight))
        self.time_integrated = bool(cfg.solver.time_integrated_rows)
        if self.time_integrated and not self.time_dependent:
            raise ConfigError(f"solver.time_integrated_rows sums a trajectory's rows over its levels; problem "
                              f"{cfg.problem.name!r} is steady: set it to false")
        # fields computed from the others, not spanned by the network (network.solve_algebraic)
        self.algebraic = self.spec.algebraic_fields(self.problem) if cfg.network.solve_algebraic else None
        self.train = self.test = None
        self.times = None
        self.sensor_matrix = None  # test-mesh tasks: (n_sensors, m) interpolation of the inputs
        self.lifted = bool(getattr(self.spec, "lifted", lambda p: False)(self.problem))
        # u = u0 + s(t) z with s(0) = 0: the initial state holds by construction
        self.ic_by_construction = self.lifted and float(self.spec.lift_scale(self.problem, [0.0])[0]) == 0.0
        if self.lifted and (cfg.train.data_weight > 0 or cfg.train.train_until is not None):
            raise ConfigError("a lifted problem (u = u0 + s(t) z, problem parameter 'lift') supports neither "
                              "train.data_weight nor train.train_until: both compare the network's z with states")
        if load_data:
            self.load()

    # ------------------------------------------------------------------ data
    def ensure_data(self) -> None:
        d = self.cfg.data_dir
        if (d / "train.h5").is_file() and (d / "test.h5").is_file():
            return
        from femoe.data import generate

        log.info("generating data in %s", d)
        generate(self.cfg.problem.name, d, self.cfg.data.n_train, self.cfg.data.n_test, seed=self.cfg.data.seed,
                 workers=self.cfg.data.workers, params=self.cfg.problem.params, progress=True)

    def load(self) -> None:
        from femoe.data import read_dataset

        self.ensure_data()
        splits = {}
        for name in ("train", "test"):
            ds = read_dataset(self.cfg.data_dir / f"{name}.h5")
            if ds.solutions.shape[-1] != self.n:
                raise DataError(f"{self.cfg.data_dir / (name + '.h5')}: solutions have {ds.solutions.shape[-1]} DOFs "
                                f"but the problem built from the config has {self.n}; the data were generated with "
                                "other problem parameters: delete the folder or point data.dir elsewhere")
            n_want = self.cfg.data.n_train if name == "train" else self.cfg.data.n_test
            if len(ds) < n_want:
                raise DataError(f"{name} split has {len(ds)} samples, the config asks for {n_want}")
            splits[name] = Split(torch.as_tensor(ds.inputs[:n_want]), torch.as_tensor(ds.solutions[:n_want]))
            if ds.times is not None:
                self.times = np.asarray(ds.times)
        self.train, self.test = splits["train"], splits["test"]
        if self.time_dependent:
            if self.times is None:
                raise DataError("a time-dependent problem needs saved times in its data")
            dts = np.diff(self.times)
            if not np.allclose(dts, dts[0], rtol=1e-9):
                raise DataError("the saved time levels must be equally spaced")
            self.dt = float(dts[0])
            self.n_levels = len(self.times)
        self.sensors = np.linspace(0, self.train.inputs.shape[1] - 1, min(self.cfg.network.sensors,
                                                                          self.train.inputs.shape[1])).round().astype(int)

    # ------------------------------------------------------------------ network inputs
    def points(self, levels: int | None = None) -> torch.Tensor:
        """Network evaluation points: DOF coordinates, or space-time points of the levels."""
        x = torch.as_tensor(self.problem.doflocs.T, dtype=torch.float32)
        if not self.time_dependent:
            return x
        L = levels or self.n_levels
        t = torch.as_tensor(self.times[:L], dtype=torch.float32)
        return torch.cat([x.repeat(L, 1), t.repeat_interleave(x.shape[0]).unsqueeze(1)], dim=1)

    def bounds(self) -> tuple[list[float], list[float]]:
        x = self.problem.doflocs
        lo, hi = list(x.min(1)), list(x.max(1))
        if self.time_dependent:
            lo.append(float(self.times[0]))
            hi.append(float(self.times[-1]))
        return lo, hi

    def branch_input(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.sensor_matrix is not None:  # a test-mesh task: inputs read at the training sensors
            S = self.sensor_matrix.to(inputs.device)
            return (inputs.double() @ S.T).float()
        return inputs[:, self.sensors].float()

    def input_points(self) -> np.ndarray:
        """Coordinates ``(m, dim)`` of the entries of an input vector: the DOFs of the space (an
        initial state or a nodal coefficient), or of its first field when the input is that
        field alone (the initial vorticity of Navier-Stokes)."""
        m = (self.train if self.train is not None else self.test).inputs.shape[1]
        x = self.problem.doflocs
        if m == self.n:
            return np.ascontiguousarray(x.T)
        if len(self.problem._tb.layouts) > 1:
            first = self.problem.basis.split_indices()[0]
            if first.size == m:
                return np.ascontiguousarray(x[:, first].T)
        raise DataError(f"inputs of {m} values are neither the {self.n} DOFs nor the first field's DOFs; "
                        "their coordinates are unknown, so they cannot be read on another mesh")

    # ------------------------------------------------------------------ graph networks
    def graph(self) -> "MeshGraph":
        """The mesh graph a :class:`~femoe.nn.MeshGNN` runs on (built once): see :class:`MeshGraph`."""
        if getattr(self, "_graph", None) is None:
            self._graph = MeshGraph.of(self.problem)
        return self._graph

    def node_input(self, inputs: torch.Tensor) -> torch.Tensor:
        """The graph network's input ``(batch, nodes, channels)``: the spec's ``node_features``
        (physics channels computed from the input, e.g. Navier-Stokes' streamfunction and
        velocity) when it has them, else the input itself when it is given on the nodes."""
        g = self.graph()
        features = getattr(self.spec, "node_features", None)
        if features is not None:
            x = features(self.problem, inputs.detach().double().cpu().numpy())
            return torch.as_tensor(x, dtype=torch.float32, device=inputs.device)
        if inputs.shape[1] != g.n_nodes:
            raise ConfigError(f"a graph network reads its input on the {g.n_nodes} mesh nodes; the inputs have "
                              f"{inputs.shape[1]} values (use network.kind = 'deeponet')")
        return inputs.float().unsqueeze(-1)

    def node_channels(self) -> int:
        """Channels of :meth:`node_input`."""
        n = getattr(self.spec, "node_channels", None)
        return int(n) if n is not None else 1

    # ------------------------------------------------------------------ test on another mesh
    def test_mesh_task(self) -> "Task":
        """The task on the test mesh of ``data.test_params`` (problem parameters overriding the
        training ones, e.g. a finer grid of the same domain): its own test data (generated in
        ``<data dir>_test_<key><value>...`` with the same seed), and a branch input that reads each
        test input at the training sensors' coordinates (P1 interpolation of the input field on the
        test mesh), so that a network trained here evaluates there unchanged (mesh-independent
        networks: the DeepONet's trunk takes coordinates)."""
        tp = dict(self.cfg.data.test_params)
        if not tp:
            raise ConfigError("data.test_params is empty: there is no test mesh")
        cfg = copy.deepcopy(self.cfg)
        cfg.problem.params = {**cfg.problem.params, **tp}
        cfg.data.test_params = {}
        tag = "_".join(f"{k}{v}" for k, v in sorted(tp.items()))
        cfg.data.dir = f"{self.cfg.data_dir}_test_{tag}"
        cfg.data.n_train = 1  # the generator wants a training split; one sample is enough
        fine = Task(cfg)
        if self.time_dependent and (fine.times.shape != self.times.shape or not np.allclose(fine.times, self.times)):
            raise ConfigError("data.test_params changed the saved time levels; the test mesh must keep them")
        pts = self.input_points()[self.sensors]  # (n_sensors, dim): where the network reads its input
        fine.sensors = self.sensors
        fine.sensor_matrix = torch.as_tensor(interpolation_matrix(fine, pts).toarray())
        return fine

    def layer_args(self, inputs: torch.Tensor) -> tuple[dict[str, Any], torch.Tensor | None]:
        """(params, u0) for the constraint layers from a batch of inputs."""
        x = inputs.double()
        if self.time_dependent:
            if x.shape[1] == self.n:
                return {}, x
            u0 = self.spec.initial_state(self.problem, x.detach().cpu().numpy())
            u0 = torch.as_tensor(u0, dtype=x.dtype, device=x.device)
            if self.lifted:  # the unknown is z of u = u0 + s(t) z: u0 is a parameter
                if self.ic_by_construction:
                    # s(0) = 0: z(0) enters no row of the state, so its initial-condition rows must
                    # not constrain w. The layers weigh them c (z(0) - u0) with c = 1 / |u0|: a
                    # constant u0 = INERT_IC makes them 1e-6 z(0) - 1, negligible against the ridge
                    # (the -1 does not depend on w). z(0) is then whatever the basis gives.
                    return {"initial_state": u0}, torch.full_like(u0, INERT_IC)
                return {"initial_state": u0}, torch.zeros_like(u0)  # z(0) = 0: rows as usual
            return {}, u0
        return self.spec.layer_params(self.problem, x), None

    def tendency_columns(self, inputs: torch.Tensor, levels: int, states: torch.Tensor | None = None) -> torch.Tensor:
        """The ``network.tendencies = m`` columns of a basis of ``levels`` levels, ``(batch, levels, n,
        (levels - 1) m)``: at level ``l >= 1``, in columns ``(l - 1) m .. l m`` and nowhere else (so
        the constraint layer weighs each level's on their own), the tendencies (the spec's
        ``tendencies``) at ``states[:, l - 1]`` (``(batch, levels - 1, n)``: the state each level
        starts from), by default every level at the input's initial state."""
        m = self.cfg.network.tendencies
        if states is None:
            u0 = self.spec.initial_state(self.problem, inputs.detach().double().cpu().numpy())
            F = torch.as_tensor(self.spec.tendencies(self.problem, u0, m), device=inputs.device)  # (batch, m, n)
            F = F.unsqueeze(1).expand(-1, levels - 1, -1, -1)
        else:
            x = states.detach().double().cpu().numpy()
            F = torch.as_tensor(self.spec.tendencies(self.problem, x.reshape(-1, self.n), m),
                                device=inputs.device).reshape(x.shape[0], levels - 1, m, self.n)
        out = F.new_zeros(F.shape[0], levels, self.n, (levels - 1) * m)
        for lev in range(1, levels):
            out[:, lev, :, (lev - 1) * m:lev * m] = F[:, lev - 1].transpose(1, 2)
        return out

    def state_columns(self, states: torch.Tensor, u0: torch.Tensor | None) -> torch.Tensor:
        """The ``network.state_columns`` of a basis of ``levels`` levels from ``states``
        ``(batch, levels - 1, n)`` (the state each level starts from): ``(batch, levels, n,
        levels - 1)``, level ``l``'s in column ``l - 1`` at that level only, in the unknown's units
        (lifted ``u = u0 + s(t) z``: ``(states[:, l - 1] - u0) / s(t_l)``, with ``u0`` ``(batch, n)``)."""
        batch, L1, n = states.shape
        cols = states.detach()
        if self.lifted:
            s = torch.as_tensor(self.spec.lift_scale(self.problem, self.times[1:L1 + 1]), dtype=cols.dtype,
                                device=cols.device)
            cols = (cols - u0.detach().to(cols)[:, None]) / s[None, :, None]
        out = cols.new_zeros(batch, L1 + 1, n, L1)
        for lev in range(L1):
            out[:, lev + 1, :, lev] = cols[:, lev]
        return out

    def layer_row_scale(self):
        """What the constraint layers take as ``row_scale``: the row weights, the transform of
        ``"energy"`` rows, or the weights as :class:`~femoe.layers.TimeIntegratedRows`."""
        if self.row_transform is not None:
            return self.row_transform
        if self.time_integrated:
            from femoe.layers import TimeIntegratedRows

            return TimeIntegratedRows(self.row_scale.numpy())
        return self.row_scale.numpy()

    # ------------------------------------------------------------------ metrics
    def state(self, u: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """The state of a method's output: ``u`` itself, or for lifted problems (the unknown is
        ``z`` of ``u = u0 + s(t) z``, see the spec's ``state_from_lifted``) ``u0 + s(t) z`` with
        ``u0`` the reference's level 0 (the initial state: every level from 0, as everywhere)."""
        if not self.lifted:
            return u
        return self.spec.state_from_lifted(self.problem, u, ref[:, 0].to(u), self.times[:u.shape[1]])

    def relative_l2(self, u: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """Per sample ``||u - ref||_M / ||ref||_M`` (summed over levels for trajectories)."""
        u = self.state(u, ref)
        B = u.shape[0]
        e = (u - ref.to(u)).detach().double().cpu().numpy().reshape(-1, self.n)
        r = ref.detach().double().cpu().numpy().reshape(-1, self.n)
        num = (e * (self.mass @ e.T).T).sum(1).reshape(B, -1).sum(1)
        den = (r * (self.mass @ r.T).T).sum(1).reshape(B, -1).sum(1)
        return torch.as_tensor(np.sqrt(num / np.maximum(den, 1e-300)))

    def residual(self, u: torch.Tensor, params: dict, u0: torch.Tensor | None,
                 dof_weight: torch.Tensor | None = None, t0: float = 0.0) -> torch.Tensor:
        """Mass-normalised weak-form residual rows (and initial-condition rows) of a field;
        ``dof_weight`` ``(n,)`` multiplies every level's row of each DOF (not the initial rows).
        Trajectories: ``u``'s level 0 is at time ``t0`` (a time window's first level)."""
        scale = self.row_scale.to(u.device, u.dtype)
        if dof_weight is not None:
            scale = scale * dof_weight.to(u.device, u.dtype)
        if self.time_dependent:
            R = self.problem.trajectory_residual(u[:, 1:], u[:, 0], self.dt, params, t0=t0) * scale
            if self.time_integrated:  # the layers' rows
                from femoe.layers import TimeIntegratedRows

                R = TimeIntegratedRows.integrate(R.reshape(R.shape[0], -1), R.shape[1], self.dt)
            if self.ic_by_construction:  # the state's level 0 is u0 whatever u[:, 0] is
                return R.reshape(u.shape[0], -1)
            ic = u[:, 0] - u0
            return torch.cat([R.reshape(u.shape[0], -1), ic], dim=1)
        if self.row_transform is not None:
            return self.row_transform(self.problem.residual(u, params) * scale, params)
        return self.problem.residual(u, params) * scale


@dataclass(frozen=True)
class MeshGraph:
    """The graph of a finite-element space for message passing.

    Nodes are the mesh points that carry DOFs: every DOF of a one-field space, and for a mixed
    space whose fields all sit on the same points (Navier-Stokes' P1 vorticity and
    streamfunction) one node per point with one DOF per field (``field_dofs[f][i]``: field
    ``f``'s DOF at node ``i``). Edges join nodes that share an element. ``period`` is the box of
    a periodic mesh (``MeshDG``), whose edge vectors across the seam are wrapped to the short way
    round.
    """

    coords: np.ndarray  # (n_nodes, dim)
    edges: np.ndarray  # (2, E)
    field_dofs: np.ndarray  # (n_fields, n_nodes)
    period: np.ndarray | None  # (dim,) box lengths of a periodic mesh
    dof_order: np.ndarray  # (n_fields * n_nodes,): the field-major output row holding DOF k

    @property
    def n_nodes(self) -> int:
        return self.coords.shape[0]

    @property
    def n_fields(self) -> int:
        return self.field_dofs.shape[0]

    @staticmethod
    def of(problem) -> "MeshGraph":
        from femoe.nn import mesh_edges

        x = problem.doflocs
        fields = [np.arange(problem.n)]
        if len(problem._tb.layouts) > 1:
            split = [np.asarray(d) for d in problem.basis.split_indices()]
            if len({d.size for d in split}) == 1 and all(np.allclose(x[:, d], x[:, split[0]]) for d in split):
                fields = split
        field_dofs = np.stack(fields)
        node_of = np.full(problem.n, -1, dtype=np.int64)
        for d in field_dofs:
            node_of[d] = np.arange(d.size)
        if (node_of < 0).any():
            raise ConfigError("the space's fields do not share their nodes; a graph network needs one node per DOF "
                              "point (use network.kind = 'deeponet')")
        edges = mesh_edges(node_of[np.asarray(problem.basis.element_dofs)])
        mesh = problem.mesh
        period = (mesh.p.max(axis=1) - mesh.p.min(axis=1)) if isinstance(mesh, MeshDG) else None
        return MeshGraph(np.ascontiguousarray(x[:, field_dofs[0]].T), edges, field_dofs, period,
                         np.argsort(field_dofs.reshape(-1)))

    def scatter(self, out: torch.Tensor) -> torch.Tensor:
        """Node outputs ``(..., n_nodes, n_fields * N)`` -> DOF outputs ``(..., n, N)``."""
        F = self.n_fields
        if F == 1:
            return out
        N = out.shape[-1] // F
        parts = out.reshape(*out.shape[:-1], F, N).movedim(-2, -3)  # (..., F, nodes, N)
        flat = parts.reshape(*out.shape[:-2], F * self.n_nodes, N)  # row j: DOF field_dofs.flat[j]
        return flat.index_select(-2, torch.as_tensor(self.dof_order, device=out.device))  # row k: DOF k


#: the layers' initial condition for a lifted unknown whose level 0 enters no row (see
#: :meth:`Task.layer_args`): its rows weigh 1 / INERT_IC
INERT_IC = 1e6


def interpolation_matrix(task: Task, points: np.ndarray) -> sp.csr_matrix:
    """``(p, m)`` matrix evaluating a P1 input field of ``task`` (see :meth:`Task.input_points`)
    at ``points`` ``(p, dim)``: exact nodal values where a point is a node (nested meshes), the
    P1 interpolant elsewhere. Points are wrapped into the mesh's box first on periodic meshes."""
    xin = task.input_points()
    m = xin.shape[0]
    pts = np.asarray(points, dtype=float)
    mesh = task.problem.mesh
    periodic = isinstance(mesh, MeshDG)  # MeshTri1DG.periodic: DOF coordinates in (lo, hi]
    if periodic:
        lo = mesh.p.min(axis=1)
        box = mesh.p.max(axis=1) - lo
        xin, pts = np.mod(xin - lo, box), np.mod(pts - lo, box)
        xin[np.isclose(xin, box)] = 0.0
        pts[np.isclose(pts, box)] = 0.0
    tree = cKDTree(xin, boxsize=box if periodic else None)
    dist, idx = tree.query(pts)
    h = float(np.min(tree.query(xin, k=2)[0][:, 1]))
    exact = dist < 1e-9 * max(1.0, h)
    rows = [np.nonzero(exact)[0]]
    cols = [idx[exact]]
    vals = [np.ones(int(exact.sum()))]
    rest = np.nonzero(~exact)[0]
    if rest.size:
        if periodic:
            raise ConfigError(f"{rest.size} sensor point(s) are not nodes of the periodic test mesh (e.g. "
                              f"{pts[rest[0]].tolist()}); use a test mesh whose nodes include the training mesh's")
        b1 = fe.Basis(task.problem.mesh, fe.ElementTriP1())
        if b1.N != m:
            raise DataError(f"cannot interpolate inputs of {m} values on a P1 space of {b1.N} DOFs")
        P = sp.coo_matrix(b1.probes(pts[rest].T))
        rows.append(rest[P.row])
        cols.append(P.col)
        vals.append(P.data)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(len(pts), m))


class NetworkOnMesh:
    """The basis built on another task's mesh (``source``, e.g. the coarse training mesh), seen
    from ``target`` (e.g. a finer test mesh). ``target``'s inputs are interpolated to the
    source's input points (:func:`interpolation_matrix`; copied on nested meshes), the network
    runs there and its output columns are interpolated to ``target``'s DOFs field by field
    (:func:`femoe.problem.interpolation_operator`; exact on nested meshes). The same holds for the
    tendency columns (``network.tendencies``): taken on the source mesh at the inputs (or at
    states interpolated there), then interpolated. The constraint and the algebraic fields stay
    ``target``'s: the caller completes the columns on ``target``'s mesh.

    Why the tendencies too: on a finer mesh the Krylov tendencies ``f'(u0)^k f(u0)`` turn towards
    the grid-scale modes the finer mesh adds (its Jacobian's largest eigenvalues grow as the mesh
    is refined), and the constraint then picks a poorer member (``benchmarks/ns_super_resolution.py``).
    ``state_tendency_mesh = "test"`` (``data.test_state_tendency_mesh``) takes the tendencies at
    solved states (tendency passes after the first) on ``target``'s mesh instead, at the state
    itself: a state solved on the finer mesh holds detail the source mesh cannot, and its first
    few tendencies are the physics of that detail. In the passes after the first every level's are taken there, level 1's (at the
    solved state's level 0, ``u0`` itself) included; the first pass's, all at ``u0``, stay the
    source's."""

    def __init__(self, source: Task, target: Task, state_tendency_mesh: str = "train"):
        from femoe.problem import interpolation_operator

        if state_tendency_mesh not in ("train", "test"):
            raise ConfigError(f"state_tendency_mesh must be 'train' or 'test'; got {state_tendency_mesh!r}")
        self.source, self.target, self.state_tendency_mesh = source, target, state_tendency_mesh
        self._restrict = _torch_sparse(interpolation_matrix(target, source.input_points()))
        self._prolong = _torch_sparse(interpolation_operator(source.problem, target.problem))
        # the solved states go to the source mesh only where their tendencies are taken there
        self._restrict_state = (_torch_sparse(interpolation_operator(target.problem, source.problem))
                                if state_tendency_mesh == "train" else None)

    def _inputs(self, inputs: torch.Tensor) -> torch.Tensor:
        """``(batch, source inputs)``: the inputs at the source's input points."""
        return self._interpolate(self._restrict, inputs.unsqueeze(-1))[..., 0].to(inputs.dtype)

    @staticmethod
    def _interpolate(A: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """``A`` (sparse, float64) applied along the DOF axis of ``X (batch, [L,] n, cols)``, in float64."""
        A = A.to(X.device)
        cols = X.movedim(-2, 0)  # (n, batch, [L,] cols)
        out = torch.sparse.mm(A, cols.reshape(cols.shape[0], -1).double()).reshape(A.shape[0], *cols.shape[1:])
        return out.movedim(0, -2)

    def __call__(self, net, inputs: torch.Tensor, levels: int | None = None) -> torch.Tensor:
        """The network's columns ``(batch, [L,] target.n, N)``."""
        from femoe.train.methods import run_network

        return self._interpolate(self._prolong, run_network(net, self.source, self._inputs(inputs), levels))

    def tendency_columns(self, inputs: torch.Tensor, levels: int, states: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`Task.tendency_columns` of the source mesh, interpolated to ``target``'s DOFs;
        ``states (batch, levels - 1, target.n)`` are interpolated to the source mesh first (with
        ``state_tendency_mesh = "test"``: :meth:`Task.tendency_columns` of ``target`` at them)."""
        if states is not None and self.state_tendency_mesh == "test":
            return self.target.tendency_columns(inputs, levels, states)
        if states is not None:
            states = self._interpolate(self._restrict_state, states.detach().unsqueeze(-1))[..., 0]
        T = self.source.tendency_columns(self._inputs(inputs), levels, states)
        return self._interpolate(self._prolong, T.double())


def _torch_sparse(A: sp.spmatrix) -> torch.Tensor:
    A = A.tocoo()
    idx = torch.as_tensor(np.vstack([A.row, A.col]), dtype=torch.long)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(A.data, dtype=torch.float64), A.shape,
                                   check_invariants=True).coalesce()


def transfer_method(method, task: Task, network_mesh: str = "test"):
    """The method ``method`` (trained on another mesh) rebuilt on ``task``'s mesh, with the
    trained network. Its constraint layer (and expert partition) is built afresh on the new
    mesh. ``network_mesh``: ``"test"``, the network moves to ``task``'s mesh (every parameter
    and buffer copied except the graph of a mesh GNN); ``"train"``, it stays on the mesh it was
    trained on and its output is interpolated to ``task``'s (:class:`NetworkOnMesh`; the
    tendencies at solved states are taken on the mesh ``task.cfg.data.test_state_tendency_mesh``
    names)."""
    from femoe.train.methods import build_method

    if network_mesh not in ("test", "train"):
        raise ConfigError(f"network_mesh must be 'test' or 'train'; got {network_mesh!r}")
    out = build_method(method.name, task).to(next(method.parameters()).device)
    if network_mesh == "train":
        out.net = copy.deepcopy(method.net)
        out.network_mesh = NetworkOnMesh(method.task, task, task.cfg.data.test_state_tendency_mesh)
        return out
    src, dst = method.net.state_dict(), out.net.state_dict()
    mesh_bound = {"coords", "src", "dst", "edge_attr", "inv_deg"}
    keep = {}
    for k, v in src.items():
        if k in mesh_bound:
            continue
        if k not in dst or dst[k].shape != v.shape:
            raise ConfigError(f"cannot move the trained network to the test mesh: {k} has shape {tuple(v.shape)} "
                              f"here and {tuple(dst[k].shape) if k in dst else 'none'} there")
        keep[k] = v
    out.net.load_state_dict(keep, strict=False)
    return out


def check_checkpoint_problem(meta: dict, task: Task, path: Path) -> None:
    if meta.get("fingerprint") != task.fingerprint:
        raise CheckpointError(f"{path}: the checkpoint was trained on another mesh or discretisation "
                              f"(fingerprint {meta.get('fingerprint')} vs {task.fingerprint} of problem "
                              f"{task.spec.name!r}); use the config it was trained with")
