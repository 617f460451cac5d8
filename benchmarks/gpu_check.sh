#!/usr/bin/env bash
# The whole GPU check in one command, sized for a short lease on one H100/H200:
#   1. the gpu-marked tests (the Pallas kernels compiled with Triton, against lax.scan);
#   2. benchmarks/gpu.py (train step, forward, per-step cost, forward error; JSON after each config);
#   3. the whole test suite on the GPU (pytest-xdist, 8 workers).
# Usage, from the repository root on a machine with jax[cuda], torch (CUDA), flax, pytest-xdist:
#   bash benchmarks/gpu_check.sh OUT_DIR
# Each part has its own time limit, so a slow part cannot starve the next; logs go to OUT_DIR.
set -u -o pipefail
out=${1:-benchmarks/results}
mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi -L
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())'
timeout "${GPU_TESTS_S:-100}" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_kernels.py \
  2>&1 | tee "$out/gpu_tests.log" | tail -30
timeout "${GPU_BENCH_S:-280}" python3 benchmarks/gpu.py --rounds "${GPU_ROUNDS:-10}" ${GPU_CONFIGS:+--configs $GPU_CONFIGS} \
  2>&1 | tee "$out/gpu_bench.log"
cp benchmarks/results/gpu.json "$out/" 2>/dev/null
timeout "${GPU_SUITE_S:-150}" python3 -m pytest -q -n 8 -p no:cacheprovider --maxfail=40 tests \
  2>&1 | tee "$out/gpu_suite.log" | tail -60
