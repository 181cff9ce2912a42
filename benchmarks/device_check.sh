#!/usr/bin/env bash
# nnkern's one-shot check on a machine with an NVIDIA GPU: installs nnkern from this checkout
# into the Python that runs it (no network needed: --no-build-isolation --no-deps, against
# the numba, numba-cuda, Cython, scikit-build-core, NumPy, PyTorch and pytest already there),
# then runs benchmarks/device_check.py, which writes device_check/device_check.json and
# device_check/device_check.md (see its docstring for the parts). Under 8 minutes on an H200.
#
#   benchmarks/device_check.sh                           # on the GPU machine
#   benchmarks/device_check.sh --dry-run --no-install    # anywhere: the simulator, tiny sizes
#   benchmarks/device_check.sh --out DIR --budget SECONDS --parts mnist,gemm ...
#
# PYTHON chooses the interpreter (default python3). --no-install skips the install (the
# package is installed already, as in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
start=$(date +%s)
if [[ " $* " != *" --no-install "* ]]; then
    echo "[device_check] installing nnkern from $(pwd) (log: device_check_install.log)" >&2
    # CMake builds with every core; the log keeps the compiler's output out of the report
    if ! CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) "$python" -m pip install --no-build-isolation --no-deps . \
            >device_check_install.log 2>&1; then
        tail -40 device_check_install.log >&2
        echo "[device_check] the install failed (device_check_install.log)" >&2
        exit 1
    fi
    echo "[device_check] installed in $(( $(date +%s) - start )) s" >&2
fi
status=0
"$python" "$(pwd)/benchmarks/device_check.py" "$@" || status=$?
echo "[device_check] finished in $(( $(date +%s) - start )) s with status $status" >&2
exit $status
