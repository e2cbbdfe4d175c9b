"""Instruction following of a trained speech-LLM, audio-first vs instruction-first, on test sets.

    .venv/bin/python benchmarks/instruction_following.py --model speechllm-starter \
        --manifest corpora/st-3h/test.jsonl corpora/sqa-3h/test.jsonl corpora/asr-10h/test.jsonl \
        --limit 40

Each row becomes its task's instruction (translate / answer the spoken question / answer a text
question about the passage / transcribe), is answered greedily by the LLM, and is scored as in
training (``speechllm.train.evaluate``): IFR per task, BLEU for translation, answer accuracy for
questions, WER for transcripts. The model is run twice, with the audio placed before and after the
instruction in the chat template (AlignFormer reports audio-first following instructions better).
``--no-lora`` switches a model's LoRA off (its adapter alone, e.g. the starter zero-shot).
Transcription goes through the LLM here even for models whose ``asr_decoder`` is ``"ctc"``: the
point is whether the LLM does what it is asked.
"""

from __future__ import annotations

import argparse
import json
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch

from speechllm import speechlm_path
from speechllm.manifest import read_manifest
from speechllm.speechlm.io import load_speechlm
from speechllm.speechlm.model import SpeechLLM
from speechllm.train import evaluate

COLUMNS = ("ifr/translate", "bleu", "ifr/spoken-question", "qa_acc/spoken-question", "ifr/passage-question",
           "qa_acc/passage-question", "ifr/transcribe", "wer")


def placed(model: SpeechLLM, audio_first: bool) -> SpeechLLM:
    prompt = replace(model.config.prompt, audio_first=audio_first)
    config = replace(model.config, prompt=prompt, asr_decoder="llm")
    return SpeechLLM(config, model.encoder, model.adapter, model.llm, model.tokenizer).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model folder or zoo name")
    parser.add_argument("--manifest", nargs="+", required=True, type=Path)
    parser.add_argument("--limit", type=int, default=40, help="first N rows of each manifest")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-lora", action="store_true",
                        help="run with the model's LoRA switched off (the adapter alone: zero-shot)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for m in args.manifest for r in read_manifest(m)[: args.limit]]
    folder = speechlm_path(args.model)
    if folder is None:
        parser.error(f"{args.model}: not a speech-LLM folder or zoo name")
    model = load_speechlm(folder, device="cpu")
    print(f"{len(rows)} rows from {', '.join(str(m) for m in args.manifest)}; model {args.model}")
    print("| placement | " + " | ".join(COLUMNS) + " |\n" + "|---" * (len(COLUMNS) + 1) + "|")
    results = {}
    for audio_first in (True, False):
        where = "audio first" if audio_first else "instruction first"
        with model.text_mode() if args.no_lora else nullcontext():
            metrics = evaluate(placed(model, audio_first), rows, max_new_tokens=args.max_new_tokens,
                               progress=True)
        results[where] = metrics
        cells = [f"{metrics[c]:.2f}" if c in metrics else "-" for c in COLUMNS]
        print(f"| {where} | " + " | ".join(cells) + " |", flush=True)
    signature = next((m["bleu_signature"] for m in results.values() if "bleu_signature" in m), None)
    if signature:
        print(f"BLEU: sacrebleu {signature}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
