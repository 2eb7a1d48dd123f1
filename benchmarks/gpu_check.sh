#!/usr/bin/env bash
# Every GPU measurement of the pre-training speed and memory work in one unattended run of at most 8 minutes; prints
# one JSON summary (also OUT/gpu_check.json). What it measures and its options: benchmarks/gpu_check.py.
#   benchmarks/gpu_check.sh --make-cache benchmarks/gpu_check_cache              # once, where SimpleITK is installed
#   benchmarks/gpu_check.sh --cache benchmarks/gpu_check_cache [--original SRC]   # on the GPU machine ($OUT: results)
#   benchmarks/gpu_check.sh --quick --device cpu --cache CACHE --out DIR           # seconds: the script still works
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec timeout 480 python benchmarks/gpu_check.py "$@"
