#!/usr/bin/env bash
# The wheels bench/gpu.sh installs on the GPU machine, which has torch 2.11, Python 3.12, numpy, xarray,
# tensorstore and tensorboard but no network (/work/.library/device/KINDS.md lists its packages): collected
# here into .device-wheels (git-ignored), carried there by the device tool. Run from the repository root.
set -euo pipefail
dir=${1:-.device-wheels}
mkdir -p "$dir"
py=(--python-version 3.12 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --only-binary=:all: --no-deps -d "$dir")
# megatron-core and zarr with what they need beyond that machine's packages; dask for jigsaw-forecast's
# zarr writer (eval/evaluate.py create_forecast_store) and jigsaw-prepare
pip download -q "${py[@]}" megatron-core==0.16.1 zarr==3.1.6 numcodecs donfig google-crc32c hjson \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions dask==2026.8.0 partd locket
# deepspeed is published as an sdist only: build a pure-python wheel of it here
pip wheel -q --no-deps -w "$dir" deepspeed==0.19.8
ls -1 "$dir"
