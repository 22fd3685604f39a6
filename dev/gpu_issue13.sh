#!/bin/bash
# Issue 13's GPU figures in one device call (dev/GPU.md rows 1, 5/18, 23 and 25): about 6
# minutes of an H100 after its start. Run from the repository root on the device machine,
# whose python3 (3.12) holds PyTorch and every dependency but a typer as new as ours, which
# needs pydantic (not there): both travel as wheels, with what they need (.whl and .gpuold
# are in .gitignore):
#
#   here, once:  for p in typer==0.29.3 pydantic==2.14.4 pydantic_core==2.50.5 \
#                  annotated-types==0.8.0 annotated-doc==0.0.7 typing_extensions==4.16.0 \
#                  typing-inspection==0.4.5; do python3 -m pip download -q --no-deps \
#                  --only-binary=:all: --python-version 3.12 --implementation cp \
#                  --platform manylinux2014_x86_64 -d .whl $p; done
#                mkdir -p .gpuold && git archive a518a75 src | tar -x -C .gpuold
#   device:      run(command="bash dev/gpu_issue13.sh", carry=[".whl", ".gpuold"], timeout_s=540)
#
# A dry run on the CPU checks the commands in a minute (tests/test_scripts.py does):
# PRESET=tiny L=64 OUT=/tmp/g13 PY=.venv/bin/python SKIP_WHEELS=1 bash dev/gpu_issue13.sh.
# Everything lands in $OUT: log.txt and one JSON per figure.
set -u
PRESET=${PRESET:-small}
L=${L:-1024}
OUT=${OUT:?set OUT to the folder for the figures}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
export PYTHONUNBUFFERED=1
if [ -z "${SKIP_WHEELS:-}" ] && ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
fi
PY=${PY:-python3}
site=/tmp/site
export PYTHONPATH=$site:$PWD/src
step() { echo "== $(date +%T) $*"; }

step environment
nvidia-smi -L 2>/dev/null
$PY -c "import torch, typer; print(torch.__version__, typer.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

step "row 1: the GPU-marked tests"
timeout 150 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_devices.py tests/test_flex.py \
    tests/test_sampler.py tests/test_sweep.py 2>&1 | tail -15

step "rows 5/18: stage 1, AR and two stages, batch 1, 16, 32 (the default precision)"
timeout 200 $PY -m dind.cli bench sample --preset "$PRESET" --length "$L" --batch-sizes 1,16,32 \
    --settings ar_cache,stage1_cache,two_stages_parallel --parallel 64 --refresh 8 \
    --recompute delayed --out "$OUT/bench-sample.json" > /dev/null && \
    $PY -c "import json; print(json.dumps(json.load(open('$OUT/bench-sample.json'))['ratios'], indent=1))"

step "row 23: stage 1's model calls alone"
timeout 90 $PY benchmarks/call_ceiling.py --preset "$PRESET" --length "$L" --batches 1,16,32 \
    --dtypes fp32,bf16 --repeats 5 --out "$OUT/call-ceiling.json"

if [ -d .gpuold/src ]; then
    step "row 25: stage 1 and AR before the fused cache fill (a518a75)"
    PYTHONPATH=$site:$PWD/.gpuold/src timeout 120 $PY -m dind.cli bench sample --preset "$PRESET" \
        --length "$L" --batch-sizes 1,16,32 --settings ar_cache,stage1_cache \
        --out "$OUT/bench-sample-a518a75.json" > /dev/null && echo written
fi
step done
