#!/usr/bin/env bash
# The GPU checks, unattended. Stages (default: tests gpu profile, about 6 minutes, under the
# device tool's 600 s per command; H200 2026-11-26: smoke 25 s, tests 95 s, gpu 150-190 s,
# profile about 60 s):
#   tests     the CUDA tests: fp16, no syncs in a step, attention in fused SDPA kernels only,
#             group norms, compile_unet on both paths (no silent fall-back to eager),
#             animation cut augmentations without syncs, RAFT on the GPU against the CPU;
#   gpu       bench.gpu at DD's defaults with today's engine defaults (both paths, 2 and 4
#             images per call, memory fit, animation modes' cut augmentations, RAFT per pair);
#   compiled  bench.gpu with compile_unet (a second call; its budget covers the secondary path);
#   compiled-full  bench.gpu with compile_unet, the full-UNet path only (over 4 minutes: on a fresh H100
#             on 2026-11-27 the models took 36 s to build and compiling forward and backward did
#             not end within the next 190 s; on the H200 on 2026-11-26 it took 119 s);
#   variants  bench.gpu_profile --no-tables: layout / norm / CLIP layer / cuDNN / compile
#             variants on one loaded model set (a second call: about 6 minutes);
#   smoke     the CUDA tests of the group norms and block pools only (seconds: run first after
#             changing them);
#   profile   bench.gpu_profile: the replaced backward passes (group norm, avg pool) alone
#             against torch's, its tables (where a step's time goes), the batching headroom
#             and the variants except torch.compile (about 3 minutes).
# GPU_BUDGET (seconds, default 240) is bench.gpu's time budget (it skips what would overrun).
# Results and logs go to ${OUT:-bench/results} (the results JSON is named after NAME).
#   bash bench/device/check.sh h100                 # tests, gpu, profile
#   bash bench/device/check.sh h100 variants        # one or more stages
# Installs the wheels in .whl/ first when the machine lacks open_clip (bench/device/wheels.sh).
set -uo pipefail
cd "$(dirname "$0")/../.."
machine="${1:-gpu}"
shift || true
stages="${*:-tests gpu profile}"
out="${OUT:-bench/results}"
mkdir -p "$out"
if ! python3 -c "import open_clip, guided_diffusion" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/nvidia-smi.txt"
for stage in $stages; do
    case "$stage" in
        tests)
            timeout 200 python3 -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py 2>&1 \
                | tee "$out/cuda-tests.log" | tail -20 ;;
        smoke)
            timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py -k "group_norm or block_average" 2>&1 \
                | tee "$out/cuda-smoke.log" | tail -5 ;;
        gpu)
            timeout $(( ${GPU_BUDGET:-240} + 20 )) python3 -m bench.gpu --machine "$machine" --out-dir "$out" \
                --budget-seconds "${GPU_BUDGET:-240}" 2>&1 \
                | tee "$out/gpu.log" ;;
        compiled)
            timeout 170 python3 -m bench.gpu --machine "$machine-compiled" --out-dir "$out" --budget-seconds 150 \
                --compile-unet 2>&1 | tee "$out/gpu-compiled.log" ;;
        profile)
            timeout 300 python3 -m bench.gpu_profile --steps 3 --skip-compile --out-dir "$out" 2>&1 \
                | tee "$out/gpu-profile.log" | tail -40 ;;
        compiled-full)
            timeout 450 python3 -m bench.gpu --machine "$machine-compiled-full" --out-dir "$out" --budget-seconds 420 \
                --compile-unet --path full 2>&1 | tee "$out/gpu-compiled-full.log" ;;
        variants)
            timeout 500 python3 -m bench.gpu_profile --no-tables --steps 4 --out-dir "$out" 2>&1 \
                | tee "$out/gpu-variants.log" ;;
        *)
            echo "check.sh: unknown stage '$stage' (smoke, tests, gpu, compiled, compiled-full, variants, profile)" >&2
            exit 2 ;;
    esac
done
