#!/usr/bin/env bash
# Every table and plot of docs/results.md, at the scale of a 2-core CPU machine (tiny preset,
# L = 128): about 50 minutes there. Re-running reuses finished training runs.
# usage: runs/results.sh [OUT]   (default runs/results)
set -euo pipefail
out=${1:-runs/results}
dind=${DIND:-.venv/bin/dind}
common=(--seeds 0,1,2 --num-samples 8 --batch-size 8 --no-progress)

# 1. The embedded corpus (Shakespeare + Milton), judged by SmolLM2-135M: the demo's model
#    (`make demo` trains it: tiny preset, 600 steps, mixed-scale 4/L with 0.9/0.1).
[ -e runs/demo/checkpoint ] || "$dind" train --out runs/demo --preset tiny --no-progress
"$dind" sweep gamma --checkpoint runs/demo --out "$out/shakespeare" \
  --gammas 0.1,0.25,0.5,0.75,1.0 --block-sizes 4,16,32,L "${common[@]}"
"$dind" sweep policy --checkpoint runs/demo --out "$out/shakespeare" "${common[@]}"
"$dind" sweep nfe --checkpoint runs/demo --out "$out/shakespeare" "${common[@]}"

# 2. The synthetic benchmark (mixture of HMMs), judged by the exact generator (oracle).
"$dind" data synthetic
syn=$(.venv/bin/python -c "from dind.synthetic import default_corpus_dir; print(default_corpus_dir())")
[ -e runs/synthetic/checkpoint ] || "$dind" train --out runs/synthetic --preset tiny \
  --corpus "$syn/docs" --no-progress
"$dind" sweep gamma --checkpoint runs/synthetic --out "$out/synthetic" --judge oracle \
  --gammas 0.1,0.25,0.5,0.75,1.0 --block-sizes 4,16,32,L "${common[@]}"
"$dind" sweep policy --checkpoint runs/synthetic --out "$out/synthetic" --judge oracle "${common[@]}"
"$dind" sweep nfe --checkpoint runs/synthetic --out "$out/synthetic" --judge oracle "${common[@]}"

# 3. The diversity control: stage 1 and two stages across top-p (Gen PPL against entropy).
"$dind" sweep topp --checkpoint runs/demo --out "$out/shakespeare" "${common[@]}"
"$dind" sweep topp --checkpoint runs/synthetic --out "$out/synthetic" --judge oracle "${common[@]}"

# 4. Training mixes (Table 3) on the embedded corpus: pretrain at the full length, then
#    fine-tune each mix for the same steps from it, as the paper fine-tunes from a full-length
#    checkpoint.
"$dind" sweep mix --out "$out/mix" --pretrain-steps 300 --steps 300 "${common[@]}"
