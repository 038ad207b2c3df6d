#!/usr/bin/env bash
# Every founding method on tinyworld: a shape, a colour and a pattern, same seeds, same judge.
#   bash benchmarks/tinyworld_methods.sh [OUT_DIR] [N]     (~7 min on 2 CPU cores)
# Prints one table (erase rate on named prompts, on synonym-only prompts, retain rate on the other
# values of the same attribute, fit seconds, edit bytes) and writes OUT_DIR/results.json and
# OUT_DIR/report.html. Settings per method are tinyworld calibrations (tests/test_tinyworld_erasure.py;
# SPACE as `erasekit demo` runs it, every token position); `uce` is UCE as published (last concept
# token, no templates) and `uce_all` UCE with the same templates and token positions as SPACE
# (`--preset erasekit`: erasekit's template lists, on preserve prompts too);
# `pure_text` builds the text basis from the last concept token, `pure_text_tail` from the concept
# token and every position after it (where tinyworld's encoder also carries the concept).
set -euo pipefail
out=${1:-tinyworld-methods}
n=${2:-24}
erasekit bench --model tinyworld \
  --methods uce,uce_all=uce,space,pure,pure_text=pure,pure_text_tail=pure,ace \
  --concepts circle,red,striped --suite target,paraphrase,retain --n "$n" \
  --set uce_all.templates=true --set uce_all.token=all --set uce_all.preset=erasekit \
  --set space.templates=true --set space.token=all --set space.target_sparsity=0.85 \
  --set pure.templates=true --set pure.forget_energy=0.95 --set pure.retain_energy=0.5 \
  --set pure_text.basis=text --set pure_text.templates=true --set pure_text.forget_energy=0.95 --set pure_text.retain_energy=0.5 \
  --set pure_text_tail.basis=text --set pure_text_tail.token=tail --set pure_text_tail.templates=true \
  --set pure_text_tail.forget_energy=0.95 --set pure_text_tail.retain_energy=0.5 \
  --set ace.templates=true --set ace.train_steps=40 \
  --out "$out" --cache "$out/cache" --no-progress
