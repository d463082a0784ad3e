#!/usr/bin/env bash
# The device checks of issue 15 in one run, under 8 minutes on one GPU: the CUDA kernels against the foreach
# path, host syncs per training step, ResNet-50 bf16 channels-last throughput (scripts/gpu_check.py).
# Writes results/bench_gpu.md. On a machine without a GPU (its CPU path, tiny sizes):
#   PYTHON=.venv/bin/python TIMEOUT=1800 scripts/gpu_check.sh --device cpu --tiny --out /tmp/bench_gpu.md
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
export HF_HUB_OFFLINE=1 WANDB_MODE=disabled
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec timeout "${TIMEOUT:-470}" "$PYTHON" scripts/gpu_check.py --device cuda --out results/bench_gpu.md "$@"
