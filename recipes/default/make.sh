#!/usr/bin/env bash
# The default model's whole recipe, one command, resumable: run it again after an interruption
# and every step continues where it stopped (finished steps are skipped).
#
#   bash recipes/default/make.sh            # from the repository root; hours on 2 CPU cores
#   STAGE0=skip bash recipes/default/make.sh   # keep the committed stage-0 vision side
#
# Steps (the MiniGPT-4 paper's, on the procedural image world; see checkpoints/default/MODEL_CARD.md):
#   0. stage 0   pretrain the small ViT + Q-Former (BLIP-2 style), 30-minute resumable chunks
#   1. stage 1   export world image-caption pairs, train the projection (frozen vision + LLM)
#   2. curate    the stage-1 model describes new images ("Continue" below 80 tokens), the rule
#                fixer cleans them, the paper's filters drop bad ones, a ground-truth reviewer
#                edits out hallucinated objects or rejects (the paper's manual check)
#   3. stage 2   finetune the projection on the curated descriptions (instruction template)
#   4. eval      held-out images: bare LLM vs stage 1 vs stage 2 -> eval-report/default/
# Each trained stage is published into checkpoints/default/stageN/ (what `--model default` loads).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}   # robust on shared cores (2 threads thrash under load)
RUNS=runs/default
N_TRAIN=${N_TRAIN:-12000}
N_CURATE=${N_CURATE:-400}
EVAL_N=${EVAL_N:-40}
mkdir -p "$RUNS"
say() { printf '\n== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

if [ "${STAGE0:-run}" != skip ]; then
  say "stage 0: vision side"
  stage0_done() { python - <<'EOF'
import json, sys, yaml
total = yaml.safe_load(open("recipes/default/stage0.yaml"))["total_steps"]
step = json.load(open("checkpoints/default/stage0/stage0.json"))["step"]
sys.exit(0 if step >= total else 1)
EOF
  }
  until stage0_done; do minigpt4 pretrain-vision recipes/default/stage0.yaml --minutes 30; done
fi

say "stage 1: world image-caption pairs"
[ -f "$RUNS/world-train/data.jsonl" ] || python -m minigpt4.world export --out "$RUNS/world-train" \
  --n "$N_TRAIN" --size 128 --format jpg --seed 1000 --kinds scene,dish,sketch,prompt --weights 4,2,2,2
minigpt4 train recipes/default/stage1.yaml
python -m minigpt4.weights.default publish "$RUNS/stage1" stage1

say "curation: describe, fix, filter, check"
[ -f "$RUNS/world-curate/data.jsonl" ] || python -m minigpt4.world export --out "$RUNS/world-curate" \
  --n "$N_CURATE" --size 128 --format jpg --seed 2000 --kinds scene,dish,sketch,prompt --weights 4,2,2,2
minigpt4 curate run --images "$RUNS/world-curate/data.jsonl" --out "$RUNS/curate" --model default@stage1 \
  --fixer rules --seed 0 --max-new-tokens 160
minigpt4 curate check "$RUNS/curate" --truth "$RUNS/world-curate/data.jsonl"
minigpt4 curate export "$RUNS/curate"

say "stage 2: curated detailed descriptions"
minigpt4 train recipes/default/stage2.yaml
python -m minigpt4.weights.default publish "$RUNS/stage2" stage2

say "eval: bare LLM vs stage 1 vs stage 2 on held-out images"
minigpt4 eval --compare default@stage2:no-image default@stage1 default@stage2 --n "$EVAL_N" \
  --out eval-report/default
say "done: see eval-report/default/report.md and checkpoints/default/"
