#!/bin/sh
# Run 5: grounded passage QA (the `passages` recipe: a third of the questions unanswered by the passage)
# continuing the shipped starter's LoRA, with sqa and translation rows so that nothing else is forgotten.
# Rows: speechllm data text --recipe passages:6000 --recipe sqa:3000 --recipe st-by-example:4000 \
#         --recipe st-everyday:2000 --seed 11 --out corpora/text/grounded-15k-s11.jsonl
# Base: runs/starter-base = speechllm/weights/starter with "quant": null.
exec .venv/bin/speechllm finetune --base runs/starter-base --freeze-adapter \
  --text-train corpora/text/grounded-15k-s11.jsonl --out runs/starter-grounded --steps 600 --save-every 50 \
  --batch-size 8 --lr 5e-4 --warmup 20 --eval-fraction 0 --eval-every 100000 --seed 11 \
  --text-noise '{"delete": 0.05, "substitute": 0.1, "insert": 0.02, "split": 0.05, "confidence": [0.6, 1.0]}' "$@"
