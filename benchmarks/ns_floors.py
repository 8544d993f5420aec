"""Baselines beside the ns_cpu results (benchmarks/results/ns_cpu.json, key "baselines"):

- persistence: u(t) = u0 at every level (z = 0 in u = u0 + (t/T) z), the field every method
  returns if its network has learned nothing;
- Crank-Nicolson floor: the exact solution of the rows every method is trained on (theta = 1/2,
  dt = T / n_steps, the same mesh, Newton at every step) against the reference (SSP-RK3 with
  small steps): no basis can do better than this in the mean;
- on the test mesh, the training mesh's reference interpolated: each test initial vorticity
  taken at the training mesh's nodes, its reference trajectory there, interpolated to the test
  mesh (femoe.problem.interpolation_operator) against the test mesh's reference: how far the
  best the training mesh can resolve is from the finer mesh's answer.

Run from the repository root after `femoe run problems/configs/ns_cpu.toml` (which generates the
data): OMP_NUM_THREADS=1 python benchmarks/ns_floors.py
"""

import json
from pathlib import Path

import numpy as np
import torch

from femoe.problem import interpolation_operator
from femoe.problems import get_problem
from femoe.reference.newton import solve_transient
from femoe.train.config import load_config
from femoe.train.task import Task, interpolation_matrix


def _lifted(U: torch.Tensor, u0: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The unknown z of u = u0 + s(t) z for a trajectory U (levels, n): what relative_l2 takes
    for the lifted problem (it measures u0 + s z, u0 the reference's level 0)."""
    z = torch.zeros_like(U)
    z[1:] = (U[1:] - u0) / s[1:, None]
    return z


def floors(task: Task) -> dict:
    params = {k: v for k, v in task.problem.config.items() if k != "lift"}
    plain = get_problem("navier_stokes_2d").build(**params)
    ref = task.test.solutions.double()
    persistence = task.relative_l2(torch.zeros_like(ref), ref)
    s = torch.as_tensor(task.times / task.problem.config["T"])
    cn = []
    for i in range(ref.shape[0]):
        _, U, _ = solve_transient(plain, ref[i, 0].numpy(), task.dt, ref.shape[1] - 1)
        U = torch.as_tensor(np.asarray(U))
        cn.append(float(task.relative_l2(_lifted(U, U[0], s)[None], ref[i:i + 1])[0]))
    cn = np.array(cn)
    return {"n_dofs": task.n, "persistence_mean": float(persistence.mean()), "persistence_std": float(persistence.std()),
            "crank_nicolson_floor_mean": float(cn.mean()), "crank_nicolson_floor_std": float(cn.std())}


def interpolated_train_reference(task: Task, fine: Task) -> dict:
    R = interpolation_matrix(fine, task.input_points())
    P = interpolation_operator(task.problem, fine.problem)
    s = torch.as_tensor(fine.times / fine.problem.config["T"])
    errs = []
    for x, ref in zip(fine.test.inputs.double().numpy(), fine.test.solutions.double()):
        _, U = task.spec.reference(task.problem, R @ x)  # (levels, n) on the training mesh: the state
        U = torch.as_tensor((P @ np.asarray(U).T).T)
        errs.append(float(fine.relative_l2(_lifted(U, ref[0], s)[None], ref[None])[0]))
    return {"interpolated_train_reference_mean": float(np.mean(errs)),
            "interpolated_train_reference_std": float(np.std(errs))}


def main() -> None:
    cfg = load_config("problems/configs/ns_cpu.toml")
    task = Task(cfg)
    fine = task.test_mesh_task()
    out = {"command": "OMP_NUM_THREADS=1 python benchmarks/ns_floors.py", "train_mesh": floors(task),
           "test_mesh": {**floors(fine), **interpolated_train_reference(task, fine)}}
    path = Path("benchmarks/results/ns_cpu.json")
    data = json.loads(path.read_text()) if path.is_file() else {}
    data["baselines"] = out
    path.write_text(json.dumps(data, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
