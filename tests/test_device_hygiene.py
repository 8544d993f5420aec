"""Device hygiene that can be checked without a GPU (CI has none).

CUDA refuses to combine a CUDA tensor with a CPU tensor that is not 0-dimensional, so a
solver that makes its counters or step lengths with a bare ``torch.ones(batch)`` works on the
CPU and fails on the first GPU run (it happened: Newton's line-search ``alpha``). Every
tensor factory in the numerical packages either takes ``device=`` or is set-up code
(``__init__``) or says on its line why it stays on the CPU (``# cpu: ...``). The real
agreement checks run on a GPU machine: tests/test_gpu.py.
"""

import ast
from pathlib import Path

import pytest
import torch

import femoe
from femoe.experts import distributed

ROOT = Path(femoe.__file__).resolve().parent
HOT = ["layers", "experts", "linalg", "assembly", "partition", "sparse.py", "problem"]
FACTORIES = {"zeros", "ones", "full", "empty", "arange", "eye", "rand", "randn", "randint", "linspace", "tensor"}


def factory_calls_without_device(source: str) -> list[tuple[int, str, str]]:
    """``(line, enclosing function, text)`` of ``torch.<factory>(...)`` calls without ``device=``
    outside ``__init__`` and not marked ``# cpu``."""
    lines = source.splitlines()
    found = []

    def visit(node, fn):
        for child in ast.iter_child_nodes(node):
            name = child.name if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else fn
            if (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                    and isinstance(child.func.value, ast.Name) and child.func.value.id == "torch"
                    and child.func.attr in FACTORIES
                    and not any(k.arg == "device" for k in child.keywords)
                    and fn != "__init__" and "# cpu" not in lines[child.lineno - 1]):
                found.append((child.lineno, fn, lines[child.lineno - 1].strip()))
            visit(child, name)

    visit(ast.parse(source), None)
    return found


def test_scanner_flags_a_bare_factory_and_accepts_device_init_and_marked_lines():
    src = ("import torch\n"
           "def step(u):\n"
           "    a = torch.ones(3, dtype=u.dtype)\n"
           "    b = torch.ones(3, device=u.device)\n"
           "    c = torch.zeros(0)  # cpu: an index set\n"
           "class L:\n"
           "    def __init__(self):\n"
           "        self.i = torch.arange(4)\n")
    assert [(line, fn) for line, fn, _ in factory_calls_without_device(src)] == [(3, "step")]


def test_numerical_code_makes_tensors_on_the_device_of_its_inputs():
    files = []
    for part in HOT:
        p = ROOT / part
        files += [p] if p.is_file() else sorted(p.rglob("*.py"))
    assert len(files) > 20
    bad = [f"{f.relative_to(ROOT.parent)}:{line} ({fn}): {text}"
           for f in files for line, fn, text in factory_calls_without_device(f.read_text())]
    assert not bad, "tensor factories without device= (pass device=, or mark '# cpu: why'):\n" + "\n".join(bad)


@pytest.mark.parametrize("gpus, local_world, expected", [(0, 1, "gloo"), (1, 1, "nccl"), (1, 2, "gloo"),
                                                          (2, 2, "nccl"), (4, 2, "nccl")])
def test_default_backend_never_puts_two_nccl_ranks_on_one_gpu(monkeypatch, gpus, local_world, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    assert distributed.default_backend() == expected


def test_gpu_benchmark_script_runs_end_to_end_with_the_cpu_standing_in(tmp_path):
    """benchmarks/gpu.py is run only on a lent GPU machine, with minutes of device time: a bug
    in the script itself must show up here, not there."""
    import json
    import os
    import subprocess
    import sys

    root = ROOT.parent
    env = {**os.environ, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu.py"), "--dry-run", "--budget-s", "120"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    assert out["device"] == "cpu (dry run)"
    assert out["throughput"] and all(r[f"{m}_gpu_s"] > 0 for r in out["throughput"] for m in ("pihc", "moe4", "patch"))
    assert out["patch_large"] and out["points"] and out["largest"]


def test_gpu_profile_script_runs_on_the_cpu():
    """benchmarks/profile_gpu.py (part of the GPU session) at a tiny size on the CPU: both layers
    are profiled and their tables printed."""
    import os
    import subprocess
    import sys

    root = ROOT.parent
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "profile_gpu.py"), "--device", "cpu",
                          "--n-cells", "16", "--levels", "4", "--rows", "5"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "== pihc on cpu" in res.stdout and "== moe4 on cpu" in res.stdout
    assert "_ImplicitRoot" in res.stdout
