#!/usr/bin/env bash
# The speed checks that need a GPU, prepared as two commands for a machine with one (16 cores, CUDA).
# They fill the GPU rows of docs/speed.md: `normlab bench --device cuda`, the A/B of torch.compile's
# CUDA-graph mode (reduce-overhead) against the eager step for a lone run and for stacked ones, and
# `normlab reproduce --device cuda` with each experiment's time.
#
# The GPU machine has torch but not normlab's own dependencies, and cannot download. Beforehand, on
# a machine that can (Python 3.12 wheels for x86-64, into a folder the command can read):
#   python3 -m pip wheel --no-deps -w .whl .
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#     mnist1d==0.0.2.post1 curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0 \
#     unfoldNd==0.2.3 filelock==4.3.1 typer==0.29.2
# (normlab's dependencies that the GPU image lacks, or has in a version below normlab's range).
# Then, on the GPU machine, from the checkout:
#   bash docs/measurements/gpu_checks.sh ab          # about 8 minutes: bench and the compile A/B
#   bash docs/measurements/gpu_checks.sh reproduce   # at most 9 minutes: as far as reproduce gets
# Logs go to $OUT (a folder; /tmp/gpu-checks if unset).
set -uo pipefail
case "${1:-}" in
  ab | reproduce) ;;
  *) echo "usage: bash docs/measurements/gpu_checks.sh ab|reproduce" >&2; exit 2 ;;
esac
out="${OUT:-/tmp/gpu-checks}"
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl ||
  { echo "installing the wheels in .whl failed (see the comment at the top)" >&2; exit 2; }
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 NORMLAB_CACHE=/tmp/nlcache
normlab=(python3 -c "from normlab.cli.main import main; main()")

case "$1" in
  ab)
    {
      nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
      nproc
      python3 -c "import sys, torch; print(sys.version.split()[0], torch.__version__, torch.cuda.get_device_name())"
    } > "$out/env.txt" 2>&1
    "${normlab[@]}" --plain bench --device cuda --workers 8 --repeats 3 2>&1 | tee "$out/bench.log"
    for spec in "mlp 1" "mlp 16" "cnn 1" "cnn 16"; do
      for mode in default reduce-overhead; do
        # shellcheck disable=SC2086  # spec is two words on purpose
        python3 docs/measurements/compile_step_ab.py $spec --device cuda --mode "$mode" 2>&1 | grep -v '^[WI][0-9]'
      done
    done | tee "$out/compile_ab.log"
    ;;
  reproduce)
    timeout 540 "${normlab[@]}" --plain reproduce --device cuda --jobs 16 --out /tmp/repro 2>&1 |
      tee "$out/reproduce.log"
    # each finished experiment's wall time from its manifest, and its files (schedule.csv too, for
    # `normlab cost`; not the large metrics)
    python3 - > "$out/reproduce_walls.txt" <<'PY'
import json, pathlib
for m in sorted(pathlib.Path("/tmp/repro").glob("*/manifest.json")):
    print(m.parent.name, json.loads(m.read_text()).get("wall_seconds"))
PY
    tar czf "$out/reproduce.tgz" -C /tmp/repro --exclude='metrics.csv*' --exclude='plots' --exclude='cells' .
    ;;
esac

