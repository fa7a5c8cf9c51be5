#!/usr/bin/env bash
# The owed GPU figures (benchmarks/RESULTS.md, "GPU, SD1.5 size"), as one prepared script for a lent H100/H200.
#
# Runs from the repository root on the device machine, whose python3 holds a CUDA torch but not diffusers: the
# wheels it needs travel in .whl/ (diffusers 0.42.1, peft 0.21.2, importlib_metadata; `pip download --no-deps`
# here, see the device tool's notes), and sdtoolkit is laid out as its installed package (trainers/, pipelines/,
# assets/ under sdtoolkit/) by links, so no build step runs there. Each stage has its own time limit and writes
# its JSON after every workload, so a stage cut short keeps what it measured; the log goes to $OUT/log.txt.
#
#     OUT=/tmp/out bash benchmarks/gpu_sd15.sh [stage seconds: A B C D E]
set -u
OUT=${OUT:-/tmp/sdtoolkit-gpu}
mkdir -p "$OUT"
A=${1:-270}
B=${2:-120}
C=${3:-100}
D=${4:-40}
E=${5:-60}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec > >(tee "$OUT/log.txt") 2>&1
stamp() { echo "=== $(date -u +%H:%M:%S) $*"; }
stamp start
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed"; exit 1; }
# the installed package's layout inside this copy of the tree (python -m and -c put the working folder first)
for d in trainers pipelines assets; do [ -e sdtoolkit/$d ] || ln -s ../$d sdtoolkit/$d || exit 1; done
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, diffusers, peft, sdtoolkit.trainers; print('torch', torch.__version__, 'diffusers', \
diffusers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" || exit 1

# A: what the first reading (2026-12-04, RESULTS "GPU, SD1.5 size") did not reach: the DMD2 step (target >= 2.0x the
# reference's images/s) and the SDS step (>= 1.5x), eager and regionally compiled (compile <= 60 s).
stamp "A: dmd2, sds (limit ${A}s)"
timeout "$A" python3 -m benchmarks.run --size sd15 --only dmd2,sds --variants eager,compiled \
    --steps 10 --warmup 3 --json "$OUT/sd15_a.json"
echo "rc=$?"
# B: why sdtoolkit's eager forward was 6 % slower than the plain call: each attention kernel, and no channels_last.
stamp "B: forward variants, sid, vsd, sample (limit ${B}s)"
timeout "$B" python3 -m benchmarks.run --size sd15 --only forward,sid,vsd,sample \
    --variants eager,attn-sdpa,attn-flash,attn-efficient,attn-cudnn,no-channels-last,1-step,4-step \
    --steps 10 --warmup 3 --json "$OUT/sd15_b.json"
echo "rc=$?"
# C: issue 18, per family: LCM and DMD2 through the real loop on SDXL-size random-weight teachers (SD1.5 size: done).
stamp "C: families (limit ${C}s)"
timeout "$C" python3 -m benchmarks.families_gpu --size full --device cuda --families sdxl --json "$OUT/families.json"
echo "rc=$?"
# D: the memory knobs (adamw8bit rows need bitsandbytes, which does not travel here: they say so).
stamp "D: memory knobs (limit ${D}s)"
timeout "$D" python3 -m benchmarks.memory_knobs --size sd15 --device cuda --batch-size 4 --methods lcm \
    --json "$OUT/knobs_sd15.json"
echo "rc=$?"
# E: issue 20, item 5: the MCM step (one 16-frame clip, AnimateDiff v1-5-2's motion layout) against yhZhai/mcm's.
stamp "E: mcm (limit ${E}s)"
timeout "$E" python3 -m benchmarks.run --size sd15 --only mcm --variants eager --steps 10 --warmup 3 \
    --json "$OUT/sd15_mcm.json"
echo "rc=$?"
stamp end
