"""Training one method: Adam with a learning-rate schedule (exponential, the paper's staircase,
cosine or constant; see :func:`lr_factor`), optional gradient-norm clipping, checkpoints,
resume, logs, Ctrl-C."""

from __future__ import annotations

import json
import logging
import math
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from femoe.errors import CheckpointError, ConfigError, NonFiniteError
from femoe.train.config import SCHEDULES, Config, describe_changes
from femoe.train.methods import Method, build_method
from femoe.train.task import Task, check_checkpoint_problem

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(tc, step: int, total: int) -> float:
    """Learning rate after ``step`` optimiser steps, relative to ``tc.lr``.

    ``exponential``: ``lr -> lr_final`` geometrically over the ``total`` steps of the run (the
    landed default); ``staircase``: the paper's code, ``lr`` held for ``lr_hold`` steps, then
    multiplied by ``lr_decay`` every ``lr_hold`` steps, never below ``lr_final``; ``cosine``:
    half a cosine from ``lr`` to ``lr_final`` over the run; ``constant``: ``lr``.
    """
    lr, lo = tc.lr, tc.lr_final
    if tc.schedule == "constant":
        return 1.0
    if tc.schedule == "staircase":
        return max(lr * tc.lr_decay ** (step // tc.lr_hold), min(lo, lr)) / lr
    frac = min(step / max(total, 1), 1.0)
    if tc.schedule == "cosine":
        return (lo + 0.5 * (lr - lo) * (1.0 + math.cos(math.pi * frac))) / lr
    if tc.schedule == "exponential":
        return (lo / lr) ** frac
    raise ConfigError(f"train.schedule must be one of {list(SCHEDULES)}; got {tc.schedule!r}")


def loss_of(task: Task, method: Method, inputs: torch.Tensor, solutions: torch.Tensor | None,
            levels: int | None = None) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """Physics-only loss (mean square of the normalised residual rows), optional data term."""
    u, info = method(inputs, levels)
    params, u0 = task.layer_args(inputs)
    r = task.residual(u, params, u0, method.loss_dof_weight)
    loss = method.physics_loss(r, params, u0)
    w = task.cfg.train.data_weight
    if w > 0 and solutions is not None:
        ref = solutions[:, :levels] if levels else solutions
        loss = loss + w * (u - ref.to(u)).square().mean()
    return loss, torch.sqrt(r.detach().square().mean()), info


def _device(name: str) -> torch.device:
    """``train.device`` as a torch device, refused unless it exists on this machine."""
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"train.device = {name!r} but CUDA is not available here; use 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"train.device = {name!r} but only {torch.cuda.device_count()} CUDA "
                              "device(s) are visible")
    return dev


class Trainer:
    """Trains one method of a run; writes ``<run_dir>/<method>/`` (checkpoint, log.jsonl)."""

    def __init__(self, cfg: Config, method_name: str, task: Task | None = None):
        self.cfg = cfg
        self.task = task or Task(cfg)
        seed_everything(cfg.train.seed)
        self.device = _device(cfg.train.device)
        self.method = build_method(method_name, self.task).to(self.device)
        self.dir = cfg.run_dir / method_name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.opt = torch.optim.Adam(self.method.parameters(), lr=cfg.train.lr)
        tc = cfg.train
        steps = tc.epochs * self.steps_per_epoch
        lr_factor(tc, 0, steps)  # refuses an unknown schedule here, not at the first step
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda k: lr_factor(tc, k, steps))
        self.epoch = 0
        self.step = 0
        self.step_times: list[float] = []
        if self.task.time_dependent and tc.train_until is not None:
            self.levels = int(np.searchsorted(self.task.times, tc.train_until, side="right"))
        else:
            self.levels = None

    @property
    def steps_per_epoch(self) -> int:
        n = self.cfg.data.n_train
        b = self.cfg.train.batch_size
        per = (n + b - 1) // b
        m = self.cfg.train.max_steps_per_epoch
        return min(per, m) if m > 0 else per

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / "checkpoint.pt"

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "method": self.method.name,
            "model": self.method.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "step_times": self.step_times,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "meta": {"problem": self.cfg.problem.name, "fingerprint": self.task.fingerprint,
                     "config": self.cfg.to_dict(), "sensors": self.task.sensors.tolist(),
                     "input_length": int(self.task.train.inputs.shape[1]),
                     "times": None if self.task.times is None else np.asarray(self.task.times).tolist()},
        }

    def save(self) -> Path:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(self.state(), tmp)
        tmp.replace(self.checkpoint_path)
        return self.checkpoint_path

    def resume(self) -> bool:
        if not self.checkpoint_path.is_file():
            return False
        try:
            st = torch.load(self.checkpoint_path, weights_only=False, map_location="cpu")
        except Exception as exc:
            raise CheckpointError(f"{self.checkpoint_path}: cannot read the checkpoint ({exc}); delete it to start "
                                  "afresh") from exc
        check_checkpoint_problem(st["meta"], self.task, self.checkpoint_path)
        diffs = describe_changes(st["meta"].get("config", {}), self.cfg.to_dict())
        if diffs:
            raise ConfigError(f"cannot resume from {self.checkpoint_path}: the config changed since it was written "
                              f"({diffs}); restore those keys, or train afresh")
        self.method.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        sched = dict(st["scheduler"])
        sched.setdefault("lr_lambdas", [None])  # checkpoints of the former ExponentialLR
        sched.pop("gamma", None)
        self.sched.load_state_dict(sched)
        self.epoch, self.step, self.step_times = st["epoch"], st["step"], list(st["step_times"])
        torch.set_rng_state(st["rng"]["torch"])
        np.random.set_state(st["rng"]["numpy"])
        random.setstate(st["rng"]["python"])
        log.info("resumed %s at epoch %d (step %d)", self.method.name, self.epoch, self.step)
        return True

    def _open_log(self):
        """``log.jsonl`` for appending: a fresh run starts it anew; a resumed one keeps the records
        up to its checkpoint's step (those after it were trained again)."""
        path = self.dir / "log.jsonl"
        if self.step == 0 or not path.is_file():
            return open(path, "w")
        kept = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue
        path.write_text("".join(kept))
        return open(path, "a")

    # ------------------------------------------------------------------ training
    def _order(self, epoch: int) -> np.ndarray:
        # depends only on (seed, epoch): a resumed run sees the same batches
        return np.random.default_rng([self.cfg.train.seed, epoch]).permutation(self.cfg.data.n_train)

    def fit(self, progress: bool = True, until_epoch: int | None = None) -> dict[str, Any]:
        """Train to ``train.epochs`` (or stop after ``until_epoch`` epochs, as an interruption
        would), saving a checkpoint after every epoch."""
        from tqdm.auto import tqdm

        tc, task = self.cfg.train, self.task
        last = tc.epochs if until_epoch is None else min(until_epoch, tc.epochs)
        total = tc.epochs * self.steps_per_epoch
        bar = tqdm(total=total, initial=self.step, desc=self.method.name, disable=not progress, leave=True)
        interrupted = False
        previous = signal.getsignal(signal.SIGINT)
        logf = self._open_log()
        try:
            self.method.train()
            while self.epoch < last:
                order = self._order(self.epoch)
                for b in range(self.steps_per_epoch):
                    idx = torch.as_tensor(order[b * tc.batch_size:(b + 1) * tc.batch_size])
                    inputs = task.train.inputs[idx].to(self.device)
                    sols = task.train.solutions[idx].to(self.device)
                    t0 = time.perf_counter()
                    self.opt.zero_grad(set_to_none=True)
                    self.method.train_step = self.step
                    loss, res, info = loss_of(task, self.method, inputs, sols, self.levels)
                    loss.backward()
                    if tc.clip_grad > 0:
                        gnorm = float(torch.nn.utils.clip_grad_norm_(self.method.parameters(), tc.clip_grad))
                    else:
                        gnorm = float(torch.sqrt(sum(p.grad.detach().square().sum() for p in
                                                     self.method.parameters() if p.grad is not None)))
                    if not (math.isfinite(loss.item()) and math.isfinite(gnorm)):
                        raise NonFiniteError(f"the loss ({loss.item()}) or its gradient (norm {gnorm}) is not finite")
                    self.opt.step()
                    self.sched.step()
                    dt = time.perf_counter() - t0
                    self.step += 1
                    self.step_times.append(dt)
                    rec = {"step": self.step, "epoch": self.epoch, "loss": loss.item(), "residual": res.item(),
                           "lr": self.sched.get_last_lr()[0], "grad_norm": gnorm, "seconds": dt, **info}
                    logf.write(json.dumps(rec) + "\n")
                    bar.set_postfix(loss=f"{loss.item():.3e}", res=f"{float(res):.2e}",
                                    its=info.get("iterations", "-"), unconv=info.get("unconverged", 0))
                    bar.update(1)
                self.epoch += 1
                self.save()
                logf.flush()
        except KeyboardInterrupt:
            interrupted = True
            path = self.save()
            log.warning("interrupted: checkpoint saved to %s (continue with --resume)", path)
            raise
        except NonFiniteError as exc:  # the step was not taken: the checkpoint holds finite weights
            path = self.save()
            raise NonFiniteError(f"{self.method.name}, step {self.step + 1}: {exc}. Training stopped; {path} holds "
                                 "the last finite state. Lower train.lr, set train.clip_grad, or check the inputs"
                                 ) from exc
        finally:
            logf.close()
            bar.close()
            signal.signal(signal.SIGINT, previous)
        return {"steps": self.step, "interrupted": interrupted}
