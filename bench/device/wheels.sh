#!/usr/bin/env bash
# Wheels for a GPU machine that has torch but no network and no open_clip/guided-diffusion
# (this workplace's device image): written to .whl/ (git-ignored), for bench/device/check.sh.
#   bash bench/device/wheels.sh            # here, with network access to the package index
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .whl
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for requirement in open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth; do
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "$requirement"
done
python3 -m pip wheel -q --no-deps guided-diffusion-sdk==1.0.0 -w .whl   # published as a source archive only
ls -1 .whl
