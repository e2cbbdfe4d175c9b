#!/bin/sh
# Run 8: run 7's LoRA (long passages) cost translation 2-3 BLEU (everyday 75.4 -> 72.7, Bible 17.7 -> 15.8 on
# benchmarks/translate.py). 150 steps from it on a translation-heavier mix, with long and short passages
# and sqa rows so that what run 7 learned stays:
#   speechllm data text --recipe st-by-example:1500 --recipe st-everyday:700 --recipe passages-long:800 \
#       --recipe passages:300 --recipe sqa:500 --seed 14 --out corpora/text/translate-3800-s14.jsonl
# Base: runs/starter-base8 = speechllm/weights/starter (run 7's LoRA) with "quant": null.
# Continue a stopped run with: sh runs/speech-llm/run8.sh --resume
set -e
ROWS=corpora/text/translate-3800-s14.jsonl
[ -f $ROWS ] || .venv/bin/speechllm data text --recipe st-by-example:1500 --recipe st-everyday:700 \
  --recipe passages-long:800 --recipe passages:300 --recipe sqa:500 --seed 14 --out $ROWS
exec .venv/bin/speechllm finetune --base runs/starter-base8 --freeze-adapter \
  --text-train $ROWS --out runs/starter-translate8 --steps 150 --save-every 50 \
  --batch-size 8 --lr 3e-4 --warmup 20 --eval-fraction 0 --eval-every 100000 --seed 14 \
  --text-noise '{"delete": 0.05, "substitute": 0.1, "insert": 0.02, "split": 0.05, "confidence": [0.6, 1.0]}' "$@"
