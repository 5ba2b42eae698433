#!/usr/bin/env bash
# The GPU checks, unattended, in one go (about 8 minutes on an H100/H200):
#   1. the CUDA tests (fp16, no syncs in a step, fused attention, group norms, compile_unet),
#   2. bench.gpu at DD's defaults with today's engine defaults (both paths, memory fit),
#   3. bench.gpu with compile_unet.
# Results and logs go to ${OUT:-bench/results} (the results JSON is named after --machine).
#   bash bench/device/check.sh h100          # machine name for the results file
# Installs the wheels in .whl/ first when the machine lacks open_clip (bench/device/wheels.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
machine="${1:-gpu}"
out="${OUT:-bench/results}"
mkdir -p "$out"
if ! python3 -c "import open_clip, guided_diffusion" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py 2>&1 | tee "$out/cuda-tests.log" | tail -20
timeout 200 python3 -m bench.gpu --machine "$machine" --out-dir "$out" --budget-seconds 170 2>&1 | tee "$out/gpu.log"
timeout 200 python3 -m bench.gpu --machine "$machine-compiled" --out-dir "$out" --budget-seconds 170 --compile-unet \
    2>&1 | tee "$out/gpu-compiled.log"
