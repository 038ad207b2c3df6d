#!/usr/bin/env bash
# Every registered method on tinyworld: a shape, a colour and a pattern, same seeds, same judge,
# first at erasekit's per-model defaults (erasekit/defaults.py), then at the papers' settings
# (--published-defaults). Unedited images are shared through the image cache.
#   bash benchmarks/tinyworld_methods.sh [OUT_DIR] [N]     (~20 min per run on 2 CPU cores at N=16)
# Writes OUT_DIR/{default,published}/{results.json,report.html} and prints one markdown table
# (erase rate on named prompts, on synonym-only prompts, retain rate on the other values of the same
# attribute, headline ring-a-bell ASR, harmonic mean, fit seconds, edit bytes; 95 % bootstrap intervals).
set -euo pipefail
out=${1:-tinyworld-methods}
n=${2:-16}
methods=uce,space,pure,ace,rece,speed,cure,mace,esd-x,esd-u
common=(--model tinyworld --methods "$methods" --concepts circle,red,striped --n "$n"
        --suite target,paraphrase,adversarial,retain --attack ring-a-bell --eta 1,2,3 --no-progress)
erasekit bench "${common[@]}" --out "$out/default"
erasekit bench "${common[@]}" --published-defaults --out "$out/published"
python "$(dirname "$0")/bench_table.py" "$out/default/results.json" "$out/published/results.json" \
  --labels default,published --metrics erase,paraphrase,retain,asr
