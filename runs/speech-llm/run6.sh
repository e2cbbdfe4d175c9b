#!/bin/sh
# Run 6: passage questions through the starter's real hearing. The passages' train split is spoken
# (espeak / flite training voices) and heard by the starter's own Whisper; rows whose answer Whisper lost
# are left out; the heard rows go in twice, beside fresh text rows so that nothing else is forgotten.
#   speechllm data synth --recipe passages --hours 5 --out corpora/passages-5h --splits train --jobs 2
#   speechllm data heard corpora/passages-5h/train.jsonl --by speechllm-starter --threads 2 \
#       --out corpora/text/passages-5h-heard.jsonl --drop-lost-answers
#   speechllm data text --recipe passages:800 --recipe sqa:2500 --recipe st-by-example:1500 \
#       --recipe st-everyday:700 --seed 12 --out corpora/text/keep-5500-s12.jsonl
# Base: runs/starter-base6 = speechllm/weights/starter (run 5's LoRA) with "quant": null.
set -e
ROWS=corpora/text/heard-mix-s12.jsonl
cat corpora/text/passages-5h-heard.jsonl corpora/text/passages-5h-heard.jsonl \
    corpora/text/keep-5500-s12.jsonl > $ROWS
exec .venv/bin/speechllm finetune --base runs/starter-base6 --freeze-adapter \
  --text-train $ROWS --out runs/starter-heard --steps 400 --save-every 50 \
  --batch-size 8 --lr 3e-4 --warmup 20 --eval-fraction 0 --eval-every 100000 --seed 12 \
  --text-noise '{"delete": 0.05, "substitute": 0.1, "insert": 0.02, "split": 0.05, "confidence": [0.6, 1.0]}' "$@"
