#!/bin/sh
# Ship run 7's LoRA (CKPT, default the run's final folder) into the starter and its benchmark copies, then
# re-run the benchmarks its LoRA moves, one after the other (the machine otherwise idle).
# runs/starter-run6: the starter folder as run 6 shipped it (made before this script: cp -r the starter).
set -e
CKPT=${1:-runs/starter-long}
for d in speechllm/weights/starter runs/starter-ctc runs/starter-no-skills runs/starter-spoken-lora \
         runs/starter-heard-twice; do
  cp "$CKPT/lora/adapter_config.json" "$CKPT/lora/adapter_model.safetensors" "$d/lora/"
done
PY=.venv/bin/python
$PY benchmarks/ask.py --models runs/starter-run6 speechllm-starter --manifest corpora/passages-long/test.jsonl \
    --answers quoted free --json benchmarks/results/ask-long.json
$PY benchmarks/ask.py --models runs/starter-before-passages runs/starter-run5 runs/starter-run6 speechllm-starter \
    --manifest corpora/passages-10h/test.jsonl --answers quoted free --json benchmarks/results/ask-grounded.json
$PY benchmarks/ask.py --models speechllm-starter runs/starter-no-skills runs/starter-spoken-lora runs/starter-ctc \
    --manifest corpora/sqa-12h/test.jsonl --json benchmarks/results/ask-hearing.json
$PY benchmarks/translate.py --data corpora/st-eval --models speechllm-starter runs/starter-heard-twice \
    speechllm-translate whisper-base --json benchmarks/results/translate.json
