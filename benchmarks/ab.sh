#!/usr/bin/env bash
# A/B timing of two versions of dind on one machine: the code at REF (a git worktree) and the
# working tree, each on one thread, run side by side so that both see the same load.
#
# usage:  benchmarks/ab.sh REF OUT [K ...]
#   REF   a commit to compare against (e.g. HEAD~1)
#   OUT   folder for the JSON figures: OUT/{old,new}-k<K>.json and OUT/{old,new}-train.json
#   K     refinement positions per call to time (default: 16 64 128)
# env:    PRESET (default tiny), LENGTH (default 1024), DRY_RUN=1 prints the commands only
#
# Each pair runs `dind bench sample --settings stage1_cache,two_stages_parallel --parallel K`
# then the pair `dind bench train --steps 10`. Compare the pairs, not runs made at other
# times: this machine's speed moves by ~20% from run to run (dev/LOG.md).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: benchmarks/ab.sh REF OUT [K ...]" >&2; exit 2; }
ref=$1 out=$2
shift 2
ks=("$@")
[ ${#ks[@]} -gt 0 ] || ks=(16 64 128)
git rev-parse --verify --quiet "$ref^{commit}" >/dev/null || { echo "ab.sh: unknown commit $ref" >&2; exit 2; }
py=.venv/bin/python
preset=${PRESET:-tiny} length=${LENGTH:-1024}
wt=$(mktemp -d)/old

run() {  # run NAME ARGS...: old and new side by side, one thread each
  local name=$1
  shift
  if [ -n "${DRY_RUN:-}" ]; then
    echo "+ old: $* --out $out/old-$name.json"
    echo "+ new: $* --out $out/new-$name.json"
    return
  fi
  OMP_NUM_THREADS=1 PYTHONPATH="$wt/src" $py -m dind.cli "$@" --out "$out/old-$name.json" \
    >"$out/old-$name.log" 2>&1 &
  OMP_NUM_THREADS=1 PYTHONPATH="$PWD/src" $py -m dind.cli "$@" --out "$out/new-$name.json" \
    >"$out/new-$name.log" 2>&1
  wait $!
}

if [ -z "${DRY_RUN:-}" ]; then
  mkdir -p "$out"
  git worktree add -q --detach "$wt" "$ref"
  trap 'git worktree remove --force "$wt"' EXIT
fi
for k in "${ks[@]}"; do
  run "k$k" bench sample --preset "$preset" --length "$length" \
    --settings stage1_cache,two_stages_parallel --parallel "$k"
done
run train bench train --preset "$preset" --steps 10
[ -n "${DRY_RUN:-}" ] || echo "ab.sh: figures in $out"
