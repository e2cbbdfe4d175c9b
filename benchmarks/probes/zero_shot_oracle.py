"""Upper bound of zero-shot instruction following over "perfect audio units".

    .venv/bin/python benchmarks/probes/zero_shot_oracle.py --manifest corpora/asr-10h/dev.jsonl --limit 40

A ``ctc-posterior`` adapter hands the LLM (near) its own token embeddings of what was said. This
script gives the frozen LLM the *exact* embeddings of the transcript in place of the audio, in
the speech-LLM's own chat-template splice, and asks it to transcribe, audio-first and
instruction-first: the WER it gets is the best any such adapter can reach without training the
LLM side (LoRA), and the gap between the placements is AlignFormer's audio-first question asked
of this LLM.
"""

from __future__ import annotations

import argparse

import torch

from speechllm.adapters import AdapterOutput
from speechllm.manifest import read_manifest
from speechllm.metrics import word_error_rate
from speechllm.speechlm.backbone import load_backbone
from speechllm.speechlm.generate import GenerationOptions, LMState, run_decoder
from speechllm.speechlm.model import PromptFormat, SpeechLLM, SpeechLLMConfig, instruction
from speechllm.zoo import DEFAULT_LLM


class _NoEncoder(torch.nn.Module):
    """Stands in for the speech encoder, which the oracle does not need."""

    dim = 1
    max_seconds = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--limit", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--instructions", nargs="*", default=["transcribe"],
                        help="task names (speechllm.speechlm.TASKS) whose reply should be the transcript")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [r for r in read_manifest(args.manifest) if r.text][: args.limit]
    llm, tokenizer = load_backbone(args.llm)
    embed = llm.get_input_embeddings()
    refs = [r.text for r in rows]
    print(f"{len(rows)} transcripts from {args.manifest}; LLM {args.llm}")
    print("| instruction | placement | WER | first reply |\n|---|---|---|---|")
    for task in args.instructions:
        for audio_first in (True, False):
            config = SpeechLLMConfig(llm=args.llm, prompt=PromptFormat(audio_first=audio_first))
            model = SpeechLLM(config, _NoEncoder(), _Identity(), llm, tokenizer)
            before, after = model.prompt_ids(instruction(task), True)
            hyps = []
            for ref in refs:
                ids = torch.tensor([tokenizer.encode(" " + ref, add_special_tokens=False)])
                units = AdapterOutput(embed(ids), torch.ones(ids.shape, dtype=torch.bool))
                spliced = model.splice([before], units, [after])
                state = LMState(llm, spliced.embeds, spliced.attention_mask, spliced.position_ids)
                tokens, *_ = run_decoder(state, model._stop_ids, GenerationOptions(max_new_tokens=96))[0]
                hyps.append(tokenizer.decode(tokens, skip_special_tokens=True).strip())
            wer = word_error_rate(refs, hyps).rate
            where = "audio first" if audio_first else "instruction first"
            print(f"| {instruction(task)} | {where} | {100 * wer:.1f}% | {hyps[0][:60]!r} |", flush=True)


class _Identity(torch.nn.Module):
    """Stands in for the adapter: the units are given directly."""

    config = None

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # the model's device is its adapter's


if __name__ == "__main__":
    with torch.no_grad():
        main()
