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

[network]
kind = "deeponet"                    # or "gnn"
n_basis = 16                         # N (basis mode); soft/patch output one field
width = 64
depth = 3
sensors = 32                         # input-function values fed to the branch

[experts]
k = 4
partition = "auto"                   # metis, rcb, slab, random
seed = 0

[solver]
rho = 1e-4
tol = 1e-8
maxiter = 100

[train]
epochs = 10
batch_size = 4
lr = 1e-3
lr_final = 1e-4
seed = 0
data_weight = 0.0                    # > 0: supervised term ||u - u_ref||^2 (the paper: 0)
device = "cpu"                       # or "cuda"
```
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

from femoe.errors import ConfigError

METHODS = ("soft", "pihc", "moe", "patch")


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


@dataclass
class NetworkConfig:
    kind: str = "deeponet"
    n_basis: int = 16
    width: int = 64
    depth: int = 3
    sensors: int = 32
    fourier_scale: float = 2.0


@dataclass
class ExpertsConfig:
    k: int = 4
    partition: str = "auto"
    seed: int = 0


@dataclass
class SolverConfig:
    rho: float = 1e-4
    tol: float = 1e-8
    maxiter: int = 100
    hessian: str = "exact"
    patch_rtol: float = 1e-10


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 4
    lr: float = 1e-3
    lr_final: float = 1e-4
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


def _fill(cls, values: dict[str, Any], where: str):
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    obj = cls()
    for k, v in values.items():
        default = getattr(obj, k)
        if isinstance(default, bool) or default is None or isinstance(default, (dict, list, str)):
            setattr(obj, k, copy.deepcopy(v))
        elif isinstance(default, int):
            if not isinstance(v, int) or isinstance(v, bool):
                raise ConfigError(f"{where}.{k} must be an integer; got {v!r}")
            setattr(obj, k, v)
        elif isinstance(default, float):
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                raise ConfigError(f"{where}.{k} must be a number; got {v!r}")
            setattr(obj, k, float(v))
        else:
            setattr(obj, k, v)
    return obj


def config_from_dict(d: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a plain dict (as read from TOML)."""
    d = copy.deepcopy(d)
    top = {k: v for k, v in d.items() if k not in _SECTIONS}
    cfg = _fill(Config, top, "config")
    for key, cls in _SECTIONS.items():
        setattr(cfg, key, _fill(cls, d.get(key, {}), key))
    validate(cfg)
    return cfg


def load_config(path: str | Path) -> Config:
    """Read a TOML run configuration (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        d = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    cfg = config_from_dict(d)
    if "name" not in d:
        cfg.name = path.stem
    return cfg


def validate(cfg: Config) -> None:
    bad = [m for m in cfg.methods if m not in METHODS]
    if bad or not cfg.methods:
        raise ConfigError(f"methods must be a non-empty list drawn from {list(METHODS)}; got {cfg.methods}")
    if cfg.network.kind not in ("deeponet", "gnn"):
        raise ConfigError(f"network.kind must be 'deeponet' or 'gnn'; got {cfg.network.kind!r}")
    for where, value in (("data.n_train", cfg.data.n_train), ("data.n_test", cfg.data.n_test),
                         ("train.epochs", cfg.train.epochs), ("train.batch_size", cfg.train.batch_size),
                         ("network.n_basis", cfg.network.n_basis), ("experts.k", cfg.experts.k),
                         ("network.width", cfg.network.width), ("network.sensors", cfg.network.sensors)):
        if value < 1:
            raise ConfigError(f"{where} must be >= 1; got {value}")
    if not (cfg.train.lr > 0 and cfg.train.lr_final > 0):
        raise ConfigError("train.lr and train.lr_final must be positive")
