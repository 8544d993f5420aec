#!/usr/bin/env bash
# One prepared GPU session (issue 13): every check and benchmark that needs CUDA, in one call,
# each step under its own time limit so that one hang cannot eat the whole lease.
#
#   here:        bash benchmarks/gpu_wheels.sh
#   device run:  carry [".whl"], command "bash benchmarks/gpu_session.sh", timeout_s ~595
#
# Writes under $OUT (or out/gpu when unset): env.txt, pytest_gpu.log, pytest_all.log, profile_gpu.txt,
# gpu.json + gpu_bench.log (benchmarks/gpu.py, GPU vs CPU in the same run).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-out/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python3 -c "import torch, skfem, meshio, pyamg; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('skfem', skfem.__version__)"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# 1. CUDA tests: every layer on CUDA vs CPU, gradchecks on CUDA, a short training run
timeout 120 python3 -m pytest -m gpu tests/test_gpu.py -q -p no:cacheprovider --durations=5 2>&1 | tee "$OUT/pytest_gpu.log" | tail -15
# 2. benchmarks: GPU vs CPU per step, patch mode at 1e5/1e6 DOFs, MoE vs PI-HC as points grow
timeout 300 python3 benchmarks/gpu.py --budget-s 250 2>&1 | tee "$OUT/gpu_bench.log" | tail -25
# 2b. where a step's time goes on the GPU (torch.profiler, paper grid)
timeout 45 python3 benchmarks/profile_gpu.py --rows 18 > "$OUT/profile_gpu.txt" 2>&1; tail -3 "$OUT/profile_gpu.txt"
# 3. the default suite with CUDA visible (what time is left)
timeout 80 python3 -m pytest -q -x -p no:cacheprovider --timeout 60 2>&1 | tee "$OUT/pytest_all.log" | tail -15
exit 0
