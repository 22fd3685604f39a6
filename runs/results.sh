#!/usr/bin/env bash
# Every table and plot of docs/results.md, at the scale of a 2-core CPU machine (tiny preset,
# L = 128): several hours there (one model trains in ~6 minutes alone, its sweeps take ~25;
# run background jobs with OMP_NUM_THREADS=1 when anything else shares the cores). Three
# models per corpus, trained with the same recipe and training seeds 0, 1, 2
# (runs of one recipe differ more than sampling seeds do), each swept with sampling seeds
# 0, 1, 2. Re-running reuses finished training runs and skips finished sweeps.
# usage: runs/results.sh [OUT]   (default runs/results); TRAIN_SEEDS="0 1 2" chooses the
# models, MIX=0 skips the training mixes.
set -euo pipefail
out=${1:-runs/results}
dind=${DIND:-.venv/bin/dind}
common=(--seeds 0,1,2 --num-samples 8 --batch-size 8 --no-progress)
syn=$(.venv/bin/python -c "from dind.synthetic import default_corpus_dir; print(default_corpus_dir())")
[ -e "$syn/docs" ] || "$dind" data synthetic >/dev/null

sweeps() {  # CHECKPOINT OUT JUDGE: Figure 2, Table 2 and the top-p control of one model
  local ck=$1 dir=$2 judge=$3
  [ -e "$dir/gamma.csv" ] || "$dind" sweep gamma --checkpoint "$ck" --out "$dir" --judge "$judge" \
    --gammas 0.1,0.25,0.5,0.75,1.0 --block-sizes 4,16,32,L "${common[@]}"
  [ -e "$dir/policy.csv" ] || "$dind" sweep policy --checkpoint "$ck" --out "$dir" \
    --judge "$judge" "${common[@]}"
  [ -e "$dir/topp.csv" ] || "$dind" sweep topp --checkpoint "$ck" --out "$dir" --judge "$judge" \
    --top-ps 0.9,0.8,0.7,0.5 --gammas 0.25,0.5 "${common[@]}"
}

for s in ${TRAIN_SEEDS:-0 1 2}; do
  # 1. The embedded corpus (Shakespeare + Milton), judged by SmolLM2-135M: `make demo`'s recipe
  #    (tiny preset, 600 steps, mixed-scale 4/L with 0.9/0.1); training seed 0 is the demo's.
  m=$out/models/shakespeare-s$s
  [ -e "$m/checkpoint" ] || "$dind" train --out "$m" --preset tiny --seed "$s" --no-progress
  sweeps "$m" "$out/shakespeare-s$s" smollm2
  # 2. The synthetic benchmark (mixture of HMMs), judged by the exact generator (oracle).
  m=$out/models/synthetic-s$s
  [ -e "$m/checkpoint" ] || "$dind" train --out "$m" --preset tiny --seed "$s" \
    --corpus "$syn/docs" --no-progress
  sweeps "$m" "$out/synthetic-s$s" oracle
done

# 3. Training mixes (Table 3) on the embedded corpus: pretrain at the full length, then
#    fine-tune each mix for the same steps from it, as the paper fine-tunes from a full-length
#    checkpoint.
[ "${MIX:-1}" = 0 ] || [ -e "$out/mix/mix.csv" ] || "$dind" sweep mix --out "$out/mix" --pretrain-steps 300 \
  --steps 300 --mix 4 --mix 4,L:0.9,0.1 --mix 4,L/2:0.9,0.1 --mix pow4 --mix pow2 "${common[@]}"

# 4. Past the model's 128-token context (L = 256 and 512), embedded corpus: half-overlapping
#    windows (the default stride, 64) and, at 512, non-overlapping ones (stride 128).
for s in ${TRAIN_SEEDS:-0 1 2}; do
  m=$out/models/shakespeare-s$s
  for L in 256 512; do
    [ -e "$out/long-L$L-s$s/gamma.csv" ] || "$dind" sweep gamma --checkpoint "$m" \
      --out "$out/long-L$L-s$s" --length $L --gammas 0.25,0.5 --block-sizes L "${common[@]}"
  done
  [ -e "$out/long-L512-stride128-s$s/gamma.csv" ] || "$dind" sweep gamma --checkpoint "$m" \
    --out "$out/long-L512-stride128-s$s" --length 512 --gammas 0.25,0.5 --block-sizes L \
    --window-stride 128 "${common[@]}"
done

# 5. The nucleus rule alone: the seed-0 model sampled with Hugging Face's rule.
[ -e "$out/nucleus-hf-s0/policy.csv" ] || "$dind" sweep policy \
  --checkpoint "$out/models/shakespeare-s0" --out "$out/nucleus-hf-s0" --nucleus hf \
  --policies snapshot "${common[@]}"

# 6. Table 1's frontier (quality against NFEs) on the seed-0 model of each corpus.
[ -e "$out/shakespeare-s0/nfe.csv" ] || "$dind" sweep nfe --checkpoint "$out/models/shakespeare-s0" \
  --out "$out/shakespeare-s0" "${common[@]}"
[ -e "$out/synthetic-s0/nfe.csv" ] || "$dind" sweep nfe --checkpoint "$out/models/synthetic-s0" \
  --out "$out/synthetic-s0" --judge oracle "${common[@]}"

# 7. A/B of the noise interval of whole-sequence rows: the seed-0 recipe with B = L rows left
#    unclipped (the search still picks the draft size's interval).
m=$out/models/shakespeare-unclipped-s0
[ -e "$m/checkpoint" ] || "$dind" train --out "$m" --preset tiny --seed 0 \
  --noise-interval 128:0.001,1 --no-progress
[ -e "$out/shakespeare-unclipped-s0/policy.csv" ] || "$dind" sweep policy --checkpoint "$m" \
  --out "$out/shakespeare-unclipped-s0" "${common[@]}"
[ -e "$out/shakespeare-unclipped-s0/topp.csv" ] || "$dind" sweep topp --checkpoint "$m" \
  --out "$out/shakespeare-unclipped-s0" --top-ps 0.9,0.8,0.7,0.5 --gammas 0.25,0.5 "${common[@]}"

# 8. Fast refinement (issue 13): stage 1, and two stages (gamma 0.25/0.5) committing K = 1, 2,
#    4, 8, 16 positions per call (uniform or most confident) or every token reaching tau = 0.7,
#    0.9, 0.99; Gen PPL and entropy against seconds, on the seed-0 model of each corpus.
[ -e "$out/shakespeare-s0/parallel.csv" ] || "$dind" sweep parallel \
  --checkpoint "$out/models/shakespeare-s0" --out "$out/shakespeare-s0" "${common[@]}"
[ -e "$out/synthetic-s0/parallel.csv" ] || "$dind" sweep parallel \
  --checkpoint "$out/models/synthetic-s0" --out "$out/synthetic-s0" --judge oracle "${common[@]}"
