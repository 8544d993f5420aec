"""Sparse times dense with many columns (``J @ B``, the basis' N columns) on the CPU: SciPy's
CSR product against torch's CSR kernel, at one and at two threads (issue 11).

    python benchmarks/bench_spmm.py [--repeat 10]

``femoe.layers._residuals.jac_times`` applies a batch of sparse Jacobians or Hessians (one per
sample and level, block-diagonal) to the basis: at ``ds_cpu`` 4 x 51 blocks of 129 rows, at the
paper's size 4 x 101 blocks of 1,025 rows, three entries a row (1D P1), N = 64 columns; also one
column (a matrix-vector product) for comparison. Each product is timed both ways in this one
process, alternating (median of ``--repeat`` after a warm-up), and the two results compared
(bitwise). Writes ``benchmarks/results/spmm.json``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import alternating, command_line, load, write  # noqa: E402


def main() -> None:
    import numpy as np
    import scipy.sparse as sp
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    args = ap.parse_args()
    out = {"command": command_line("bench_spmm.py", env=""), "load_at_start": load(), "cases": []}
    for blocks, n in ((4 * 51, 129), (4 * 101, 1025)):
        rows = blocks * n
        rng = np.random.default_rng(0)
        # block-diagonal tridiagonal blocks: a 1D P1 Jacobian per (sample, level)
        r = np.repeat(np.arange(rows), 3)
        c = r + np.tile([-1, 0, 1], rows)
        keep = (c >= 0) & (c < rows) & (c // n == r // n)
        M = sp.csr_matrix((rng.random(int(keep.sum())), (r[keep], c[keep])), shape=(rows, rows))
        Mt = torch.sparse_csr_tensor(torch.from_numpy(M.indptr.astype(np.int64)),
                                     torch.from_numpy(M.indices.astype(np.int64)), torch.from_numpy(M.data),
                                     M.shape, check_invariants=False)
        for k in (64, 1):
            X = rng.random((rows, k))
            Xt = torch.from_numpy(X)
            for threads in (1, 2):
                torch.set_num_threads(threads)
                secs = alternating({"scipy": lambda: M @ X, "torch_csr": lambda: Mt @ Xt}, args.repeat)
                med = {name: statistics.median(v) for name, v in secs.items()}
                row = {"rows": rows, "blocks": blocks, "block_rows": n, "columns": k, "torch_threads": threads,
                       "seconds": med, "torch_over_scipy": med["torch_csr"] / med["scipy"],
                       "bitwise_equal": bool(np.array_equal(M @ X, (Mt @ Xt).numpy()))}
                out["cases"].append(row)
                print(row, flush=True)
    out["load_at_end"] = load()
    print("wrote", write("spmm", out))


if __name__ == "__main__":
    main()
