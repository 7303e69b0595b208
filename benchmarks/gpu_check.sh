#!/usr/bin/env bash
# The GPU check in one call (benchmarks/README.md, "GPU check"): report and log go to $OUT when
# it is set (the folder a device run brings back), else benchmarks/_out; extra arguments pass on.
set -o pipefail; cd "$(dirname "$0")/.." && out="${OUT:-benchmarks/_out}" && mkdir -p "$out" && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
