#!/usr/bin/env bash
# The solver and full-scale benchmarks on one device, in one go (issue 14).
#
#   bash benchmarks/device.sh OUT_DIR                      # on a GPU machine: --device cuda
#   DEVICE=cpu QUICK=1 FAMILIES=sd15 bash benchmarks/device.sh OUT_DIR   # the same script, checked on a CPU
#
# Environment:
#   DEVICE    cuda (default) | cuda:N | cpu
#   FAMILIES  full-scale families, comma-separated (default sd15,sd21,sdxl)
#   DTYPE     load dtype of the full-scale pipelines (default float16)
#   BASELINE  the solver's "before": a git revision of this repository, a .py file of the old one-file
#             erasekit/linalg.py, or a folder holding a copy of the erasekit/linalg package, for a machine
#             without the history (default 39c22aa, the one-file solver before its speed work; make the
#             file here with `git show 39c22aa:src/erasekit/linalg.py > F`)
#   QUICK     1: solver on one block per distinct width, full-scale on the scaled-down configs
#   PYTHON    interpreter (default: .venv/bin/python if present, else python)
#
# Writes OUT_DIR/device.txt (what ran where), OUT_DIR/solver.txt and OUT_DIR/full_scale_<family>.txt,
# each the benchmark's printed table; full-size pipelines are built into OUT_DIR/models unless
# ERASEKIT_FULL_SCALE_CACHE names a cache. Stops at the first failing step (nothing falls back to
# the CPU: both benchmarks refuse --device cuda when torch sees no GPU).
set -euo pipefail

out=${1:?usage: bash benchmarks/device.sh OUT_DIR}
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
device=${DEVICE:-cuda}
families=${FAMILIES:-sd15,sd21,sdxl}
dtype=${DTYPE:-float16}
baseline=${BASELINE:-39c22aa}
py=${PYTHON:-}
if [[ -z "$py" ]]; then
  if [[ -x "$root/.venv/bin/python" ]]; then py="$root/.venv/bin/python"; else py=python; fi
fi
mkdir -p "$out"
export ERASEKIT_FULL_SCALE_CACHE=${ERASEKIT_FULL_SCALE_CACHE:-$out/models}
quick=()
scaled=()
if [[ "${QUICK:-0}" == 1 ]]; then quick=(--quick --family sd15); scaled=(--scaled); fi

{
  echo "# erasekit device benchmarks: $(date -u +%FT%TZ)"
  echo "device $device; families $families; dtype $dtype; baseline $baseline; quick ${QUICK:-0}"
  "$py" - "$device" <<'EOF'
import sys, platform, torch
dev = sys.argv[1]
print(f"torch {torch.__version__}; python {platform.python_version()}; {platform.processor() or platform.machine()}")
if dev.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit(f"DEVICE={dev}: torch sees no CUDA GPU (torch {torch.__version__}); set DEVICE=cpu to check the script on a CPU")
    p = torch.cuda.get_device_properties(torch.device(dev))
    print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB")
EOF
} | tee "$out/device.txt"

echo "== solver: before ($baseline) vs after, $device" | tee -a "$out/device.txt"
"$py" "$root/benchmarks/solver.py" --device "$device" --baseline "$baseline" "${quick[@]}" | tee "$out/solver.txt"

IFS=, read -ra fams <<< "$families"
for fam in "${fams[@]}"; do
  echo "== full scale: $fam, $dtype, $device" | tee -a "$out/device.txt"
  "$py" "$root/benchmarks/full_scale.py" --family "$fam" --dtype "$dtype" --device "$device" --methods uce,space "${scaled[@]}" \
    | tee "$out/full_scale_$fam.txt"
done
echo "done: $out" | tee -a "$out/device.txt"
