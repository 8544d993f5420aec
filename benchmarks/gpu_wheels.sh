#!/usr/bin/env bash
# Run HERE (a machine with PyPI) before a GPU session: the H200 image has torch, numpy, scipy,
# h5py, matplotlib and tqdm but not scikit-fem, meshio, pyamg or pymetis, and it cannot reach
# PyPI. This saves Python 3.12 x86_64 wheels of exactly those into .whl/ (git-ignored), which
# the device call carries (carry: [".whl"]) and benchmarks/gpu_session.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
plat=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  plat+=(--platform "$p")
done
for pkg in "scikit-fem==$(python -c 'import skfem; print(skfem.__version__)')" \
           "meshio==5.3.5" "pyamg==$(python -c 'import pyamg; print(pyamg.__version__)')" \
           "pymetis==2025.2.2" "rich" "markdown-it-py" "mdurl"; do
  python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plat[@]}" -d .whl "$pkg"
done
ls -la .whl
