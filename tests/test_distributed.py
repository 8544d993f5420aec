"""torchrun with two CPU ranks (gloo): same field and gradients as one process; failures stop."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ex03_torchrun_experts.py"

pytestmark = pytest.mark.distributed


def _torchrun(tmp_path, *args, timeout=240):
    exe = shutil.which("torchrun")
    cmd = ([exe] if exe else [sys.executable, "-m", "torch.distributed.run"]) + [
        "--nproc-per-node", "2", "--standalone", str(EXAMPLE), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_ranks_equal_one_process(tmp_path):
    proc = _torchrun(tmp_path, "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = subprocess.run([sys.executable, str(EXAMPLE), "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    ref = torch.load(tmp_path / "single" / "result_rank0.pt")
    for rank in (0, 1):
        res = torch.load(tmp_path / "ddp" / f"result_rank{rank}.pt")
        torch.testing.assert_close(res["u"], ref["u"], rtol=0, atol=1e-10)
        assert set(res["grads"]) == set(ref["grads"])
        for name, g in ref["grads"].items():
            torch.testing.assert_close(res["grads"][name], g, rtol=0, atol=1e-10)
        assert float(ref["jump"].max()) > 0 and torch.equal(res["jump"], ref["jump"])
    # the gradients are not trivially zero
    assert max(float(g.abs().max()) for g in ref["grads"].values()) > 1e-9


def test_a_failing_rank_stops_the_others_with_a_clear_error(tmp_path):
    proc = _torchrun(tmp_path, "--out", str(tmp_path / "f"), "--fail-rank", "1", "--timeout", "30", timeout=120)
    assert proc.returncode != 0
    log = proc.stdout + proc.stderr
    assert "rank 1 failed on purpose" in log
    assert not (tmp_path / "f" / "result_rank0.pt").exists()
