"""Taylor remainder rates of PI-HC and PI-HC-MoE on the bundled unstructured meshes (issue 15).

The problems and directions of tests/test_taylor_unstructured.py (plate with holes, 2D; the
tetrahedral box, 3D): the rate of ``|L(B + h dB) - L(B) - h <dL/dB, dB>|`` as h halves, from
h0 = 1e-2 and from h0 = 1e-3, with the info record's weight_error and adjoint_residual.

    OMP_NUM_THREADS=1 python benchmarks/taylor_rates.py    # -> benchmarks/results/taylor_rates.json
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
import test_taylor_unstructured as T  # noqa: E402
from _common import machine  # noqa: E402


def rates(mesh: str, kind: str) -> dict:
    pb, info, taylor = T.taylor_case(kind, mesh)
    out = {"mesh": mesh, "dofs": pb.n, "layer": kind, "weight_error": float(info.weight_error.max()),
           "adjoint_residual": float(info.adjoint_residual.max())}
    for h0 in (1e-2, 1e-3):
        r, converged = taylor(h0)
        out[f"rates_from_{h0:g}"] = r.round(3).tolist()
        out[f"converged_from_{h0:g}"] = bool(converged)
    return out


if __name__ == "__main__":
    rows = [rates(m, k) for m in ("plate", "box") for k in ("pihc", "moe")]
    for r in rows:
        print(json.dumps(r))
    dest = ROOT / "benchmarks" / "results" / "taylor_rates.json"
    dest.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print("wrote", dest)
