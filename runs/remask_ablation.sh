#!/usr/bin/env bash
# The paper's Table 2 at small scale: stage 1 alone, then two stages (block L) at gamma 0.5
# with snapshot, post-hoc and random remasking; every setting judged the same way.
# usage: runs/remask_ablation.sh CHECKPOINT JUDGE OUT_DIR [L] [NUM_SAMPLES] [SEED]
set -euo pipefail
ckpt=$1 judge=$2 out=$3 L=${4:-128} n=${5:-32} seed=${6:-0}
dind=${DIND:-.venv/bin/dind}
mkdir -p "$out"
common=(--checkpoint "$ckpt" --length "$L" --num-samples "$n" --batch-size 8 --seed "$seed" --no-progress)
"$dind" sample "${common[@]}" --stages 4 --out "$out/stage1.jsonl"
for policy in snapshot posthoc random; do
  "$dind" sample "${common[@]}" --stages "4,$L" --remask 0.5 --remask-policy "$policy" \
    --out "$out/$policy.jsonl"
done
for f in stage1 snapshot posthoc random; do
  "$dind" eval "$out/$f.jsonl" --judge "$judge" --out "$out/$f.metrics.json" --no-progress \
    | grep "^mean gen ppl" | sed "s/^/$f: /"
done
