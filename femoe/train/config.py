"""Run configuration: a TOML file, validated, with the paper's settings as defaults.

```toml
name = "ds-small"                    # results/<name>/
methods = ["soft", "pihc", "moe", "patch"]

[problem]
name = "diffusion_sorption_1d"
params = { n_cells = 128, n_saved = 26 }

[data]
n_train = 32
n_test = 8
seed = 0
dir = "data/ds-small"                # generated here when missing
test_params = {}                     # e.g. { grid = 64 }: also test on that mesh (super-resolution)
test_network_mesh = "test"           # where the basis is built for that test: "test" (the network
                                     # rebuilt on the test mesh) or "train" (network and tendencies
                                     # on the training mesh, interpolated to the test mesh; the
                                     # constraint stays there)
test_state_tendency_mesh = "train"   # with test_network_mesh = "train" and tendency passes: where
                                     # the tendencies at each pass's solved state are taken,
                                     # "train" (the state interpolated there) or "test" (on the
                                     # test mesh, at the state itself)

[network]
kind = "deeponet"                    # or "gnn"
n_basis = 16                         # N (basis mode); soft/patch output one field
width = 64
depth = 3
sensors = 32                         # input-function values fed to the branch
solve_algebraic = false              # true: fields an algebraic equation fixes (Navier-Stokes'
                                     # streamfunction) computed from the others, not learned
tendencies = 0                       # > 0: m Krylov tendencies of the initial state per level
                                     # added to the basis (trajectories; pihc, moe)
tendency_passes = 1                  # > 1: tendencies re-taken at each solution's previous
                                     # level, then solved again (this many solves in all)
state_columns = false                # passes > 1: each level also gets the previous solution's
                                     # state it starts from as a column (on the mesh the rows
                                     # are enforced on)

[experts]
k = 4
partition = "auto"                   # metis, rcb, slab, random
seed = 0
loss = "experts"                     # MoE training loss: "experts" (each expert's weights on the
                                     # whole mesh), "stitched" (the output) or "both"
interface_loss_weight = 1.0          # MoE loss: weight of the rows at interface DOFs
warm_start = 0                       # train the first steps through one PI-HC solve
time_windows = 1                     # MoE on trajectories: time windows, each with its own
                                     # experts (spatio-temporal experts); 1: the whole trajectory
state_column = false                 # time windows: each window's initial state as one more
                                     # basis column, held over the window
overlap = 0                          # MoE: each expert also enforces the rows of the DOFs within
                                     # this many rings of its own (overlapping experts)
coarse = false                       # MoE: two-level experts, a global solve corrected by each
                                     # expert on its interior (needs loss = "stitched")
sweeps = 1                           # two-level experts: rounds of corrections (later rounds
                                     # cover the bands along the interfaces)

[solver]
rho = 1e-4
tol = 1e-8
maxiter = 100
row_weights = "mass"                 # basis-mode row weights: "mass" (1/M_ii), "boundary", "energy" or "energy_sample" (steady)
dirichlet_weight = 1.0               # weight of the Dirichlet rows u_i - g_i (PDE rows: see above)
time_integrated_rows = false         # trajectories: rows summed over the levels (integral form, solution units)
unconverged = "flag"                 # every constraint layer, unconverged solves: "flag", "exclude" (no gradient), "raise"

[train]
epochs = 10
batch_size = 4
lr = 1e-3
lr_final = 1e-4                      # the schedule's floor / end value
schedule = "exponential"             # lr -> lr_final geometrically over the run; or "staircase"
                                     # (the paper's code: lr held lr_hold steps, then times
                                     # lr_decay every lr_hold steps, floor lr_final), "cosine"
                                     # (half cosine lr -> lr_final), "constant"
lr_hold = 800                        # staircase: steps per stair
lr_decay = 0.5                       # staircase: factor per stair, in (0, 1]
clip_grad = 0.0                      # > 0: clip the gradient norm (the paper: 1); 0: off
seed = 0
data_weight = 0.0                    # > 0: supervised term ||u - u_ref||^2 (the paper: 0)
device = "cpu"                       # or "cuda"
```

Every key is checked when the file is read, before any data are generated: its type (from the
dataclasses below) and its range or choices (``_RULES``); an unknown key is answered with the
nearest valid one (or the section it belongs in), and ``problem.params`` with what the problem
accepts. :func:`config_changes` lists the keys two configs differ in (``femoe run --resume``
refuses a changed config with them).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from femoe.errors import ConfigError, FemoeError

METHODS = ("soft", "pihc", "moe", "patch", "pihc_patch")
SCHEDULES = ("exponential", "staircase", "cosine", "constant")  # train.schedule (see trainer.lr_factor)


@dataclass
class ProblemConfig:
    name: str = "diffusion_sorption_1d"
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    n_train: int = 32
    n_test: int = 8
    seed: int = 0
    dir: str = ""
    workers: int = 1
    # problem parameters of a second test set on another mesh of the same domain (e.g.
    # { grid = 64 } after training at grid = 32: the paper's super-resolution test); {}: none
    test_params: dict[str, Any] = field(default_factory=dict)
    # where the basis is built for the test on that mesh: "test" (the network rebuilt there: a mesh
    # GNN on the test mesh's graph; tendencies taken there) or "train" (the network and the
    # tendencies on the training mesh, from the test inputs interpolated there, their columns
    # interpolated to the test mesh field by field); the constraint layer and the algebraic
    # fields are the test mesh's in both
    test_network_mesh: str = "test"
    # with test_network_mesh = "train" and network.tendency_passes > 1: where the tendencies at each
    # pass's solved state are taken, "train" (that state interpolated to the training mesh, the
    # columns interpolated back) or "test" (on the test mesh at the state itself, so they carry
    # the fine state's own detail). Every level's, in the passes after the first: level 1's, at the
    # solved state's level 0, which is u0, too; the first pass's, all at u0, stay the training mesh's
    test_state_tendency_mesh: str = "train"


@dataclass
class NetworkConfig:
    kind: str = "deeponet"
    n_basis: int = 16
    width: int = 64
    depth: int = 3
    sensors: int = 32
    fourier_scale: float = 2.0
    # fields that a linear algebraic equation fixes from the others (the problem's
    # algebraic_fields: Navier-Stokes' streamfunction) are computed from the network's other
    # fields by a sparse solve, not spanned by the network; false: the network spans every field
    solve_algebraic: bool = False
    # > 0 (basis-mode methods, trajectories): the basis gets m Krylov tendencies of the initial
    # state per level (the problem's tendencies: f_1 = the right-hand side at u0, f_{k+1} = its
    # Jacobian at u0 times f_k), one column per level and tendency, (levels - 1) m in all
    tendencies: int = 0
    # > 1 (with tendencies): after each constraint solve, every level's tendencies are taken again
    # at the solution's previous level and the layer solves again, this many solves in all; the
    # recomputed columns are constants to the gradient (stop-gradient). 1: the initial state's
    tendency_passes: int = 1
    # passes > 1: from the second pass on, level l's basis also gets the state the previous
    # solution has at level l - 1, as one column of its own (in the unknown's units: for a
    # lifted u = u0 + s(t) z, (u_{l-1} - u0) / s(t_l)), so the span holds the persistent field
    # beside the tendencies at that state (a Taylor step from it); stop-gradient like the
    # tendencies, and taken on the mesh the rows are enforced on (not interpolated from the
    # network's mesh)
    state_columns: bool = False


@dataclass
class ExpertsConfig:
    k: int = 4
    partition: str = "auto"
    seed: int = 0
    # PI-HC-MoE training only (the layer is unchanged): weight, in the loss, of the residual rows
    # at interface DOFs (of the stitched output and of each expert's field; 1: every row alike)
    interface_loss_weight: float = 1.0
    # PI-HC-MoE training only: the first warm_start optimiser steps train the basis through one
    # hard constraint over the whole domain (PI-HC), then the experts take over; 0: experts from
    # the first step. Evaluation always uses the experts.
    warm_start: int = 0
    # PI-HC-MoE training only: the physics loss of "experts" (every expert's weights applied on
    # the whole mesh, B w_k, averaged over the experts: the basis must let each expert's local
    # rows pick the global solution), "stitched" (the output: each DOF from its owner; its
    # interface rows then dominate the loss and, on ds_cpu, train a poor basis: 25-50 % against
    # 6-7 %, docs/results.md) or "both"
    loss: str = "experts"
    # PI-HC-MoE on trajectories: the levels cut into this many time windows, each with its own
    # experts (spatio-temporal experts, femoe.experts.TimeWindows), marched in order; 1: one set
    # of experts over the whole trajectory
    time_windows: int = 1
    # time windows: each window's basis gets its initial state (the previous window's last level)
    # as one more column, held over the window (femoe.experts.TimeWindows(state_column=True)): the
    # span always holds the persistent field, so in extrapolation the window is not left with the
    # network's extrapolated columns alone
    state_column: bool = False
    # PI-HC-MoE: each expert also enforces the rows of the DOFs within this many rings of its own
    # (overlapping experts; the output still takes each DOF from its owner)
    overlap: int = 0
    # PI-HC-MoE: two-level experts (HardConstraintMoE(coarse=True)): one global solve on the same
    # basis, then every expert corrects it on the DOFs it owns whose neighbours it owns; the
    # output is conforming, so the loss is taken of it (loss = "stitched")
    coarse: bool = False
    # two-level experts: rounds of corrections; each later round corrects the previous output on
    # a partition that covers the DOFs along the previous interfaces (HardConstraintMoE(sweeps=))
    sweeps: int = 1


@dataclass
class SolverConfig:
    rho: float = 1e-4
    tol: float = 1e-8
    maxiter: int = 100
    hessian: str = "exact"
    patch_rtol: float = 1e-10
    # basis-mode rows (PI-HC, MoE; also the loss of every method): "mass" divides row i by M_ii
    # (pointwise residuals; a boundary-facet row then carries its boundary term times 1/M_ii ~ 1/h);
    # "boundary" divides by M_ii + F_ii, F_ii = int_facets phi_i^2 ds the boundary measure of the
    # row, so facet rows weigh their boundary condition like a Dirichlet row (O(1)), not O(1/h)
    row_weights: str = "mass"
    dirichlet_weight: float = 1.0  # weight of Dirichlet rows u_i - g_i
    # trajectories: each level's rows summed over the levels up to it, times dt (the scheme in
    # integral form, in solution units; femoe.layers.TimeIntegratedRows), in the layers and the loss
    time_integrated_rows: bool = False
    # basis-mode samples (or MoE samples with an expert) whose least squares did not converge:
    # "flag" (used, counted in the log), "exclude" (no gradient from them) or "raise"
    unconverged: str = "flag"


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    lr_final: float = 1e-4
    schedule: str = "exponential"  # "exponential", "staircase", "cosine", "constant"
    lr_hold: int = 800
    lr_decay: float = 0.5
    clip_grad: float = 0.0
    seed: int = 0
    data_weight: float = 0.0
    max_steps_per_epoch: int = 0  # 0: all batches
    train_until: float | None = None  # time-dependent: train on levels with t <= train_until
    device: str = "cpu"  # "cuda", "cuda:1", ...: network, residuals and solves run there


@dataclass
class Config:
    name: str = "default"
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    results: str = "results"
    problem: ProblemConfig = field(default_factory=ProblemConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    experts: ExpertsConfig = field(default_factory=ExpertsConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.results) / self.name

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir or f"data/{self.name}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTIONS = {"problem": ProblemConfig, "data": DataConfig, "network": NetworkConfig, "experts": ExpertsConfig,
             "solver": SolverConfig, "train": TrainConfig}

# ------------------------------------------------------------------------------ schema
# Types come from the dataclass annotations; ranges and choices from _RULES. A rule is either
# (check, "what the value must be") or a tuple of choices, or a callable returning the choices
# (for registries imported lazily). Every key of the dataclasses must have a type in _TYPES.

_TYPES: dict[str, tuple[Any, str]] = {
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "float | None": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)), "a number"),
    "str": (lambda v: isinstance(v, str), "a string (in quotes)"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "a table, e.g. { key = value }"),
}


def _ge(lo):
    return (lambda v: math.isfinite(v) and v >= lo), f">= {lo}"


def _gt(lo):
    return (lambda v: math.isfinite(v) and v > lo), f"> {lo}"


def _partitioners() -> list[str]:
    from femoe.partition import available_methods

    return list(available_methods())


def _problems() -> list[str]:
    from femoe.problems import PROBLEMS

    return list(PROBLEMS)


def _device_ok(v: str) -> bool:
    import torch

    try:
        dev = torch.device(v)
    except (RuntimeError, ValueError):
        return False
    return dev.type in ("cpu", "cuda")


_RULES: dict[str, Any] = {
    "config.name": ((lambda v: bool(v.strip()) and not set(v) & set("/\\")),
                    "a non-empty name without '/' (it names the results folder)"),
    "config.results": ((lambda v: bool(v.strip())), "a non-empty folder name"),
    "problem.name": _problems,
    "data.n_train": _ge(1), "data.n_test": _ge(1), "data.seed": _ge(0), "data.workers": _ge(1),
    "network.kind": ("deeponet", "gnn"),
    "network.n_basis": _ge(1), "network.width": _ge(1), "network.depth": _ge(1), "network.sensors": _ge(1),
    "network.fourier_scale": _ge(0), "network.tendencies": _ge(0), "network.tendency_passes": _ge(1),
    "experts.k": _ge(1), "experts.partition": _partitioners, "experts.seed": _ge(0),
    "experts.interface_loss_weight": _ge(0), "experts.warm_start": _ge(0), "experts.time_windows": _ge(1),
    "experts.overlap": _ge(0), "experts.sweeps": _ge(1),
    "experts.loss": ("stitched", "experts", "both"),
    "solver.rho": _ge(0), "solver.tol": _gt(0), "solver.maxiter": _ge(1), "solver.hessian": ("exact", "gauss_newton"),
    "solver.patch_rtol": _gt(0), "solver.row_weights": ("mass", "boundary", "energy", "energy_sample"), "solver.dirichlet_weight": _gt(0),
    "solver.unconverged": ("flag", "exclude", "raise"),
    "train.epochs": _ge(1), "train.batch_size": _ge(1), "train.lr": _gt(0), "train.lr_final": _gt(0),
    "train.schedule": SCHEDULES, "train.lr_hold": _ge(1),
    "train.lr_decay": ((lambda v: 0 < v <= 1), "in (0, 1]"), "train.clip_grad": _ge(0),
    "train.seed": _ge(0), "train.data_weight": _ge(0), "train.max_steps_per_epoch": _ge(0),
    "train.train_until": ((lambda v: v is None or (math.isfinite(v) and v > 0)), "> 0 (a time)"),
    "train.device": (_device_ok, "'cpu', 'cuda' or 'cuda:<index>'"),
}


def _nearest(word: str, choices) -> str:
    near = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


def _section_of(where: str) -> str:
    return "the top level" if where == "config" else f"[{where}]"


def _check_value(where: str, key: str, value: Any, type_name: str) -> Any:
    """``value`` checked against its type and rule; returns it (ints given for floats as float)."""
    full = f"{where}.{key}"
    name = key if where == "config" else full
    ok, what = _TYPES[type_name]
    if not ok(value):
        hint = " without quotes" if isinstance(value, str) and type_name in ("int", "float", "bool") else ""
        raise ConfigError(f"{name} must be {what}; got {value!r} ({type(value).__name__}). Write it{hint} as "
                          f"{what} in {_section_of(where)} of the config")
    if type_name in ("float", "float | None") and value is not None:
        value = float(value)
    rule = _RULES.get(full)
    if rule is None:
        return value
    if callable(rule) and not isinstance(rule, tuple):
        rule = tuple(rule())
    if isinstance(rule[0], str):  # choices
        if value not in rule:
            raise ConfigError(f"{name} must be one of {list(rule)}; got {value!r}{_nearest(value, rule)}")
        return value
    check, what = rule
    try:
        good = bool(check(value))
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigError(f"{name} must be {what}; got {value!r}. Change it in {_section_of(where)} of the config")
    return value


def _unknown_key(where: str, key: str, valid) -> ConfigError:
    msg = f"unknown key {key!r} in {_section_of(where)}{_nearest(key, valid)}"
    homes = [s for s, cls in _SECTIONS.items() if s != where and key in {f.name for f in dataclasses.fields(cls)}]
    if where != "config" and key in {f.name for f in dataclasses.fields(Config)}:
        homes.append("top level")
    if homes:
        msg += f"; {key!r} belongs in " + " or ".join(h if h == "top level" else f"[{h}]" for h in homes)
    return ConfigError(f"{msg}; valid keys there: {sorted(valid)}")


def _fill(cls, values: Any, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"[{where}] must be a table of keys (a [{where}] section); got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if where != "config" or f.name not in _SECTIONS}
    for k in values:
        if k not in fields:
            raise _unknown_key(where, k, fields)
    obj = cls()
    for k, v in values.items():
        setattr(obj, k, copy.deepcopy(_check_value(where, k, v, str(fields[k].type))))
    return obj


def config_from_dict(d: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a plain dict (as read from TOML).

    Raises
    ------
    femoe.errors.ConfigError
        An unknown key (the message names the nearest valid one), a value of the wrong type or
        outside its range, an unknown method, problem, partitioner or device, or problem
        parameters the problem refuses.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"a run configuration must be a table of keys; got {type(d).__name__}")
    d = copy.deepcopy(d)
    top = {k: v for k, v in d.items() if k not in _SECTIONS}
    cfg = _fill(Config, top, "config")
    for key, cls in _SECTIONS.items():
        setattr(cfg, key, _fill(cls, d.get(key, {}), key))
    validate(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a TOML run configuration (see the module docstring); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist" + (" (it is a folder)" if path.is_dir() else "")
                          + "; give the path of a .toml run configuration, e.g. problems/configs/default.toml")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file ({exc}); give a .toml run configuration") from exc
    try:
        cfg = config_from_dict(d)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if "name" not in d:
        cfg.name = path.stem
    return cfg


def validate(cfg: Config) -> None:
    """Checks across keys (each key's type and range was checked as :func:`_fill` set it; the
    defaults are valid, see tests/test_bad_input_cli.py)."""
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ConfigError(f"methods must be a non-empty list drawn from {list(METHODS)}; got {cfg.methods}"
                          + (_nearest(bad[0], METHODS) if bad else ""))
    if len(set(cfg.methods)) != len(cfg.methods):
        raise ConfigError(f"methods lists a method twice: {cfg.methods}")
    if cfg.experts.partition == "metis" and {"moe", "patch", "pihc_patch"} & set(cfg.methods):
        import importlib.util

        if importlib.util.find_spec("pymetis") is None:
            raise ConfigError("experts.partition = 'metis' needs pymetis, which is not installed: pip install "
                              "pymetis, or use partition = 'auto' (rcb without pymetis) or 'rcb'")
    from femoe.problems import get_problem
    from femoe.problems._base import ProblemSpec

    spec = get_problem(cfg.problem.name)
    if cfg.network.solve_algebraic and type(spec).algebraic_fields is ProblemSpec.algebraic_fields:
        raise ConfigError(f"network.solve_algebraic = true, but problem {cfg.problem.name!r} has no field fixed by an "
                          "algebraic equation of the others (its spec defines no algebraic_fields); set it to false")
    if cfg.network.tendencies and (spec.steady or type(spec).tendencies is ProblemSpec.tendencies):
        raise ConfigError(f"network.tendencies = {cfg.network.tendencies}, but problem {cfg.problem.name!r} does not "
                          "provide tendencies of an initial state (a trajectory problem whose spec defines "
                          "tendencies); set it to 0")
    if cfg.network.state_columns and cfg.network.tendency_passes == 1:
        raise ConfigError("network.state_columns = true adds each level's previous state from the previous pass; it "
                          "needs network.tendency_passes > 1")
    if cfg.network.tendency_passes > 1 and not cfg.network.tendencies:
        raise ConfigError(f"network.tendency_passes = {cfg.network.tendency_passes} re-takes the tendencies at each "
                          "solution, but network.tendencies = 0; set tendencies > 0 or tendency_passes = 1")
    if cfg.experts.coarse and cfg.experts.loss != "stitched":
        raise ConfigError(f"experts.coarse = true (two-level experts) corrects one global solve, so its experts have "
                          f"no weights of their own to put in the loss; set experts.loss = \"stitched\" (got "
                          f"{cfg.experts.loss!r})")
    if cfg.experts.coarse and cfg.experts.overlap:
        raise ConfigError(f"experts.overlap = {cfg.experts.overlap} does not apply to two-level experts (coarse = true): "
                          "each corrects its interior from the rows it owns; set overlap = 0")
    if cfg.experts.state_column and cfg.experts.time_windows == 1:
        raise ConfigError("experts.state_column = true appends each time window's initial state to its basis; it "
                          "needs experts.time_windows > 1")
    if cfg.experts.sweeps > 1 and not cfg.experts.coarse:
        raise ConfigError(f"experts.sweeps = {cfg.experts.sweeps} applies to two-level experts; set experts.coarse = "
                          "true or sweeps = 1")
    if cfg.data.test_network_mesh not in ("test", "train"):
        raise ConfigError(f"data.test_network_mesh must be 'test' or 'train'; got {cfg.data.test_network_mesh!r}")
    if cfg.data.test_state_tendency_mesh not in ("test", "train"):
        raise ConfigError("data.test_state_tendency_mesh must be 'test' or 'train'; got "
                          f"{cfg.data.test_state_tendency_mesh!r}")
    for where, params in (("problem.params", cfg.problem.params), ("data.test_params", cfg.data.test_params)):
        try:
            spec.parameters(**params)
        except FemoeError as exc:
            raise ConfigError(f"{where}: {exc}") from None


_ALWAYS_CHANGEABLE = {"name", "methods", "results", "data.dir", "data.workers", "train.device",
                      "data.test_params", "data.test_network_mesh",
                      "data.test_state_tendency_mesh"}  # evaluation only


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts (``Config.to_dict()``), except
    those a resumed run may change (the run's name, methods, results and data folders, data
    workers, device, and the test on another mesh, which only evaluation reads). Keys missing from ``old`` (a checkpoint of an older femoe) count as
    unchanged when ``new`` holds their default."""
    defaults = Config().to_dict()
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if isinstance(a, dict) and isinstance(b, dict) and key in _SECTIONS:
            for sub in sorted(set(a) | set(b)):
                full = f"{key}.{sub}"
                dflt = defaults[key].get(sub)
                if full not in _ALWAYS_CHANGEABLE and a.get(sub, dflt) != b.get(sub, dflt):
                    changed.append(full)
        elif key not in _ALWAYS_CHANGEABLE and a != b:
            changed.append(key)
    return changed


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """:func:`config_changes` with the values, ``"key: old -> new; ..."`` ("" when none)."""
    def value(d, key):
        sec, _, sub = key.partition(".")
        return d.get(sec, {}).get(sub) if sub else d.get(sec)

    return "; ".join(f"{k}: {value(old, k)!r} -> {value(new, k)!r}" for k in config_changes(old, new))
