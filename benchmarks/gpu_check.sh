#!/usr/bin/env bash
# The prepared GPU check (issue 22): run from a checkout on a machine with one NVIDIA GPU and its
# own torch. Installs the Python packages that machine lacks from wheels carried in
# benchmarks/gpu_wheels/ (or $GPU_CHECK_WHEELS; how to download them: benchmarks/README.md,
# "The GPU check"), then runs benchmarks/gpu_check.py within 8 minutes in all.
#
# usage: benchmarks/gpu_check.sh [--device cuda|cpu] [--dry-run] [--out DIR] [--budget-s S]
#   --device cpu --dry-run: the same steps at tiny sizes (the test suite runs this).
# Exit status: 0 when the CUDA path's correctness check passed, 1 when it failed, 2 when a
# package is missing and no wheel provides it.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
wheels="${GPU_CHECK_WHEELS:-$here/gpu_wheels}"

# What ehr-ssl imports beyond torch (pyproject.toml's dependencies, as module names).
missing() {
    "$python" - <<'EOF'
import importlib.util
modules = ["polars", "pyarrow", "pandas", "numpy", "sklearn", "safetensors", "transformers",
           "tqdm", "matplotlib"]
print(" ".join(m for m in modules if importlib.util.find_spec(m) is None))
EOF
}

absent="$(missing)"
if [ -n "$absent" ]; then
    if ! compgen -G "$wheels/*.whl" >/dev/null; then
        echo "gpu_check: missing Python packages ($absent) and no wheels in $wheels" >&2
        exit 2
    fi
    site="$(mktemp -d)"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --target "$site" "$wheels"/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    absent="$(missing)"
    if [ -n "$absent" ]; then
        echo "gpu_check: still missing after installing $wheels: $absent" >&2
        exit 2
    fi
fi

export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
# cuBLAS reads this at start: the correctness check compares a resume bit for bit.
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
# 8 minutes in all: the script skips what would overrun its budget; this is the backstop.
exec timeout 480 "$python" "$here/gpu_check.py" "$@"
