#!/usr/bin/env bash
# The default model's whole recipe, one command, resumable: run it again after an interruption
# and every step continues where it stopped (finished steps are skipped).
#
#   bash recipes/default/make.sh            # from the repository root; hours on 2 CPU cores
#   STAGE0=skip bash recipes/default/make.sh   # keep the committed stage-0 vision side
#
# Steps (the MiniGPT-4 paper's, on the procedural image world; see checkpoints/default/MODEL_CARD.md):
#   0. stage 0   pretrain the small ViT + Q-Former (BLIP-2 style), 30-minute resumable chunks, then
#                continue it for binding (stage0-binding.yaml), then for object names (stage0-names.yaml),
#                then on a GPU if there is one (stage0-gpu.yaml; ~9 min on an H200, ~19 h on 2 CPU cores):
#                the vision side that ships since session 14. (The shipped export ran 2,481 steps past
#                the recipe's total_steps as a warm restart: the command is in stage0-gpu.yaml's header.)
#   1. stage 1   export world image-caption pairs, train the projection (frozen vision + LLM)
#   2. curate    the stage-1 model describes new images ("Continue" below 80 tokens), the rule
#                fixer cleans them, the paper's filters drop bad ones, a ground-truth reviewer
#                edits out hallucinated objects or rejects (the paper's manual check)
#                Then a second vision side for names: stage0-query.yaml and stage0-word.yaml continue
#                stage0-gpu so each query holds one object name, `minigpt4 fit-words` fits the word readout
#                on it (no LLM), and `dual-vision` makes checkpoints/default/stage0-dual (stage0-gpu's side
#                for the projection + that readout on its own side).
#   3. stage 2   finetune the projection + LoRA on the curated descriptions and the world's
#                instruction conversations (instruction template); then 2b: drills of the attribute
#                questions (half the samples) with website practice (recipes/default/stage2-attr.yaml);
#                the published stage 2 then takes the word readout (`attach-words stage2 stage0-dual`)
#   4. eval      held-out images: bare LLM vs stage 1 vs stage 2 (without and with the readout)
#                -> runs/default/eval/report.md
# Each trained stage is published into checkpoints/default/stageN/ (what `--model default` loads).
# SCALE=tiny runs the same chain in a few minutes (what CI runs): a few images and steps, into
# RUNS (default runs/default-tiny), without touching checkpoints/default.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # robust on shared cores (2 threads thrash under load)
if [ "${SCALE:-full}" = tiny ]; then
  RUNS=${RUNS:-runs/default-tiny}; N_TRAIN=16; N_CURATE=8; EVAL_N=2; STAGE0=skip; PUBLISH=0
  # 3 steps cannot train a projection: start from the shipped one so the curation has something to keep
  STAGE1_ARGS="model=default@stage1 max_steps=3 batch_size=4 checkpoint_every=3 progress=false"
  STAGE2_ARGS="max_steps=2 batch_size=2 checkpoint_every=2 progress=false"
  CURATE_ARGS="--max-new-tokens 24 --continue-below 0 --batch-size 4 --min-words 3 --no-progress"
  CHECK_ARGS="--min-recall 0 --min-words 1 --max-hallucinated 99"   # a 3-step model names few real objects: keep the chain going
  EVAL_ARGS="--tasks qa,describe --max-new-tokens 12 --quiet"
fi
RUNS=${RUNS:-runs/default}
N_TRAIN=${N_TRAIN:-12000}
N_CURATE=${N_CURATE:-400}
EVAL_N=${EVAL_N:-24}
PUBLISH=${PUBLISH:-1}
mkdir -p "$RUNS" && RUNS=$(cd "$RUNS" && pwd)   # absolute: recipe paths are relative to the recipe file
say() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }
source recipes/default/world.sh   # world OUT N SEED, drills WORLD

if [ "${STAGE0:-run}" != skip ]; then
  stage0_done() {  # stage0_done RECIPE: has its export reached the recipe's total_steps?
    python -c 'import json, os, sys, yaml
r = yaml.safe_load(open(sys.argv[1]))
meta = os.path.join(os.path.dirname(sys.argv[1]), r["export_dir"], "stage0.json")
sys.exit(not os.path.exists(meta) or json.load(open(meta))["step"] < r["total_steps"])' "$1"
  }
  say "stage 0: vision side"
  until stage0_done recipes/default/stage0.yaml; do minigpt4 pretrain-vision recipes/default/stage0.yaml --minutes 30; done
  say "stage 0, continued for binding (which object is where), then for names"
  until stage0_done recipes/default/stage0-binding.yaml; do
    minigpt4 pretrain-vision recipes/default/stage0-binding.yaml --minutes 30
  done
  until stage0_done recipes/default/stage0-names.yaml; do
    minigpt4 pretrain-vision recipes/default/stage0-names.yaml --minutes 30
  done
  say "stage 0 at GPU scale (256 images a step): the vision side that ships"
  gpu_args=()
  python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' || gpu_args=(device=cpu amp=null workers=0)
  until stage0_done recipes/default/stage0-gpu.yaml; do
    minigpt4 pretrain-vision recipes/default/stage0-gpu.yaml "${gpu_args[@]}" --minutes 30
  done
  say "stage 0 for names: a second vision side whose queries each hold one object name, and its word readout"
  until stage0_done recipes/default/stage0-query.yaml; do
    minigpt4 pretrain-vision recipes/default/stage0-query.yaml "${gpu_args[@]}" --minutes 30
  done
  until stage0_done recipes/default/stage0-word.yaml; do
    minigpt4 pretrain-vision recipes/default/stage0-word.yaml "${gpu_args[@]}" --minutes 30
  done
  if [ ! checkpoints/default/stage0-word/fit.json -nt checkpoints/default/stage0-word/vision.safetensors ]; then
    minigpt4 fit-words default@stage0-word --out checkpoints/default/stage0-word   # ~5 min, no LLM
  fi
  python -m minigpt4.weights.default dual-vision stage0-gpu stage0-word stage0-dual
fi

say "stage 1: world image-caption pairs"
world "$RUNS/world-train" "$N_TRAIN" 1000
minigpt4 train recipes/default/stage1.yaml output_dir="$RUNS/stage1" data.0.path="$RUNS/world-train/data.jsonl" \
  ${STAGE1_ARGS:-}
if [ "$PUBLISH" = 1 ]; then python -m minigpt4.weights.default publish "$RUNS/stage1" stage1; fi

say "curation: describe, fix, filter, check"
world "$RUNS/world-curate" "$N_CURATE" 2000
minigpt4 curate run --images "$RUNS/world-curate/data.jsonl" --out "$RUNS/curate" --model "default@$RUNS/stage1" \
  --fixer rules --seed 0 --max-new-tokens 160 ${CURATE_ARGS:-}
minigpt4 curate check "$RUNS/curate" --truth "$RUNS/world-curate/data.jsonl" ${CHECK_ARGS:-}
minigpt4 curate export "$RUNS/curate"

say "stage 2: curated detailed descriptions + world instruction conversations"
minigpt4 train recipes/default/stage2.yaml output_dir="$RUNS/stage2" init="$RUNS/stage1" \
  data.0.path="$RUNS/curate" data.1.path="$RUNS/world-train/instructions.jsonl" ${STAGE2_ARGS:-}

say "stage 2b: attribute-question drills (presence, object, color, count, position)"
drills "$RUNS/world-train"
minigpt4 train recipes/default/stage2-attr.yaml output_dir="$RUNS/stage2-attr" init="$RUNS/stage2" \
  data.0.path="$RUNS/world-train/qa-attr.jsonl" data.1.path="$RUNS/world-train/instructions.jsonl" \
  data.2.path="$RUNS/world-train/instructions.jsonl" ${STAGE2_ARGS:-}
if [ "$PUBLISH" = 1 ]; then
  python -m minigpt4.weights.default publish "$RUNS/stage2-attr" stage2
  # the word readout on its own vision side joins the shipped stage: its image tokens follow the projection's
  python -m minigpt4.weights.default attach-words stage2 stage0-dual
fi

say "eval: bare LLM vs stage 1 vs stage 2 on held-out images"
if [ "$RUNS/eval/compare.md" -nt "$RUNS/stage2-attr/checkpoints/latest" ]; then
  echo "up to date: $RUNS/eval/compare.md (delete it to evaluate again)"
else
  minigpt4 eval --compare "default@$RUNS/stage1:no-image" "default@$RUNS/stage1" "default@$RUNS/stage2-attr" \
    "default@stage0-dual@$RUNS/stage2-attr" --n "$EVAL_N" --out "$RUNS/eval" ${EVAL_ARGS:-}
fi
say "done: $RUNS/eval/compare.md; shipped weights in checkpoints/default/"
