#!/usr/bin/env bash
# The trend across model sizes (docs/results.md, "Scale"): for one preset, train several models
# with the paper's recipe (pretrain at block L, then mixed-scale fine-tuning from it), an
# in-domain AR judge with the same budget, then the policy sweep, the gamma sweep (gamma
# 0.25/0.5/0.75, stage-2 blocks 16 and L) and the top-p frontier (stage 1 and two stages at
# top-p 0.5-0.95), each drawn once and judged by SmolLM2 and by the AR judge (--samples-from).
# Runs unchanged on CPU and GPU.
#
# usage: runs/scale.sh SIZE OUT          e.g. runs/scale.sh base runs/scale/base
# env:   TRAIN_SEEDS   models to train                 (default "0 1 2")
#        PRE, FT       steps of the two phases         (default per size, below)
#        CORPUS        corpus of every run             (default english)
#        MODELS        where checkpoints go            (default OUT/models; on a GPU machine
#                      put them outside the folder that is copied back)
#        SEEDS, NUM_SAMPLES  sampling seeds and samples per seed (default 0,1,2 and 8)
# Results (CSV, JSON, PNG; samples JSONL of sampling seed 0 only) go to OUT/<judge>-s<seed>/
# (judge smollm2 or ar), the held-out NELBO at block 4 to OUT/nelbo-s<seed>.json.
# Re-running reuses finished training runs, resumes a killed one from its last checkpoint
# (a folder killed before its first checkpoint starts over) and skips finished sweeps.
# TRAIN_ONLY=1 stops after the training runs; DRY_RUN=1 prints the commands instead.
set -euo pipefail
size=${1:?usage: runs/scale.sh SIZE OUT}
out=${2:?usage: runs/scale.sh SIZE OUT}
dind=${DIND:-.venv/bin/dind}
python=${PYTHON:-.venv/bin/python}
models=${MODELS:-$out/models}
corpus=${CORPUS:-english}
case $size in
  tiny) L=128; pre=${PRE:-450}; ft=${FT:-150} ;;
  base) L=256; pre=${PRE:-360}; ft=${FT:-120} ;;
  small) L=1024; pre=${PRE:-30000}; ft=${FT:-10000} ;;
  *) echo "error: unknown size '$size' (tiny | base | small)" >&2; exit 2 ;;
esac
common=(--seeds "${SEEDS:-0,1,2}" --num-samples "${NUM_SAMPLES:-8}" --batch-size 8 --no-progress)
run() {  # run "$@" with stdout appended to the file named by $to (default: discarded)
  echo "+ $*"
  [ -n "${DRY_RUN:-}" ] || "$@" >>"${to:-/dev/null}"
}
has_checkpoint() {  # DIR has a checkpoint: in place, or the complete copy a save killed
  # between its two renames left hidden (dind's loader takes it; dind.checkpoint)
  [ -e "$1/checkpoint" ] || compgen -G "$1/.checkpoint.new-*/config.json" >/dev/null \
    || compgen -G "$1/.checkpoint.old-*/config.json" >/dev/null
}
train() {  # train DIR ARGS...: a fresh run, or --resume of one with a checkpoint
  local dir=$1; shift
  local again=()
  if has_checkpoint "$dir"; then again=(--resume)
  elif [ -e "$dir" ] && [ -z "${DRY_RUN:-}" ]; then rm -rf "$dir"; fi
  run "$dind" train --out "$dir" "$@" "${again[@]}" --no-progress
}
finished() {  # finished DIR STEPS: DIR's checkpoint is the one saved after step STEPS
  [ -e "$1/checkpoint/training_state.pt" ] && "$python" -c 'import sys, torch
state = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
sys.exit(int(state["step"]) != int(sys.argv[2]))' "$1/checkpoint/training_state.pt" "$2"
}
if [ -n "${DRY_RUN:-}" ]; then log() { :; }; else
  mkdir -p "$out" "$models"
  log() { echo "$(date +%T) $*" | tee -a "$out/scale.log"; }
fi

# The in-domain judge: an AR model of the same size, corpus and total budget.
ar=$models/ar-judge
if ! finished "$ar" $((pre + ft)); then
  log "training the AR judge ($size, $((pre + ft)) steps)"
  to=$out/train-ar-judge.log train "$ar" --preset "$size" --corpus "$corpus" --objective ar \
    --max-steps $((pre + ft)) --seed 100
fi

for s in ${TRAIN_SEEDS:-0 1 2}; do
  p=$models/pretrain-s$s m=$models/bd3-s$s
  if ! finished "$p" "$pre"; then
    log "seed $s: pretraining at block L ($pre steps)"
    to=$out/train-pretrain-s$s.log train "$p" --preset "$size" --corpus "$corpus" --seed "$s" \
      --max-steps "$pre" --block-sizes $L --block-probs 1
  fi
  if ! finished "$m" "$ft"; then
    log "seed $s: mixed-scale fine-tuning ($ft steps)"
    to=$out/train-bd3-s$s.log train "$m" --preset "$size" --corpus "$corpus" --seed "$s" \
      --max-steps "$ft" --init-from "$p"
  fi
  [ -z "${TRAIN_ONLY:-}" ] || continue
  [ -e "$out/nelbo-s$s.json" ] || run "$dind" eval --checkpoint "$m" --block-size 4 \
    --no-progress --out "$out/nelbo-s$s.json"
  # SmolLM2 judges what the sweeps draw; the AR judge scores the very same samples
  for judge in smollm2 ar; do
    j=$judge reuse=(); d=$out/$judge-s$s
    [ "$judge" = ar ] && j=$ar reuse=(--samples-from "$out/smollm2-s$s")
    [ -e "$d/policy.csv" ] || { log "seed $s, judge $judge: policy"; run "$dind" sweep policy \
      --checkpoint "$m" --out "$d" --judge "$j" "${reuse[@]}" "${common[@]}"; }
    [ -e "$d/gamma.csv" ] || { log "seed $s, judge $judge: gamma"; run "$dind" sweep gamma \
      --checkpoint "$m" --out "$d" --judge "$j" --gammas 0.25,0.5,0.75 --block-sizes 16,L \
      "${reuse[@]}" "${common[@]}"; }
    [ -e "$d/topp.csv" ] || { log "seed $s, judge $judge: top-p frontier"; run "$dind" sweep \
      topp --checkpoint "$m" --out "$d" --judge "$j" --top-ps 0.95,0.9,0.8,0.7,0.6,0.5 \
      --gammas 0.25,0.5 "${reuse[@]}" "${common[@]}"; }
  done
  # keep the results small: the samples of sampling seed 0 only
  [ -n "${DRY_RUN:-}" ] || find "$out/smollm2-s$s/samples" -name '*.jsonl' \
    ! -name '*_seed0.jsonl' -delete 2>/dev/null || true
done
log "done: $out (tables: .venv/bin/python runs/results_tables.py $out)"
