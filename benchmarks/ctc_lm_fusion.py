"""Tune the CTC + LLM beam search of a ``ctc-posterior`` speech-LLM: WER and search time per setting.

    .venv/bin/python benchmarks/ctc_lm_fusion.py --model speechllm-starter \
        --manifest corpora/asr-10h/dev.jsonl --limit 100 \
        --settings '{"beam_size": 1}' '{"beam_size": 4, "lm_weight": 0.3, "token_bonus": 2.0}'

The audio is encoded once (encoder + CTC head, the model's blank penalty included); then each
setting (``CTCBeamOptions`` fields, JSON) decodes the same CTC log-probabilities in batches of
``--batch-size``, as ``speechllm transcribe`` would. Tune on dev rows, report on test rows.
The chosen setting goes into the model folder's config.json as ``ctc_beam``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from speechllm import speechlm_path
from speechllm.audio import load_audio
from speechllm.manifest import read_manifest
from speechllm.metrics import word_error_rate
from speechllm.speechlm.ctc_beam import (
    CTCBeamOptions,
    CTCPrefixBeamSearch,
    LLMPrefixScorer,
    document_start_id,
)
from speechllm.speechlm.io import load_speechlm
from speechllm.speechlm.model import pad_audio
from speechllm.zoo import STARTER


@torch.no_grad()
def ctc_log_probs(model, paths: list[str], batch_size: int) -> list[torch.Tensor]:
    out = []
    for start in range(0, len(paths), batch_size):
        padded, lengths = pad_audio([load_audio(p) for p in paths[start: start + batch_size]])
        log_probs, mask = model.adapter.frame_log_probs(*model.encode_frames(padded, lengths))
        out += [lp[m] for lp, m in zip(log_probs, mask, strict=True)]
    return out


def greedy_path(log_probs: torch.Tensor) -> list[int]:
    """The best label per frame, repeats merged, blanks (0) dropped: the model's greedy transcript."""
    labels = log_probs.argmax(-1).tolist()
    return [u for i, u in enumerate(labels) if u != 0 and (i == 0 or u != labels[i - 1])]


def search_load(log_probs: list[torch.Tensor], options: CTCBeamOptions) -> str:
    """What makes the beam search cost more: candidates per frame it would try, units per word."""
    frames = sum(len(lp) for lp in log_probs)
    candidates = 0
    for lp in log_probs:
        active = lp[lp[:, 0] < math.log(options.blank_skip)]
        top = active[:, 1:].topk(min(options.candidates, lp.shape[1] - 1), -1).values
        candidates += int((top >= options.min_logprob).sum())
    return f"{candidates / max(frames, 1):.2f} candidate units per frame"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=STARTER, help="zoo name or folder (ctc-posterior)")
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--limit", type=int, default=0, help="first N rows only (0 = all)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--settings", nargs="+", default=['{"beam_size": 1}', '{"beam_size": 4}'],
                        metavar="JSON", help="CTCBeamOptions fields, one JSON object per setting")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    folder = speechlm_path(args.model)
    if folder is None:
        parser.error(f"{args.model}: not a speech-LLM folder or zoo name")
    model = load_speechlm(folder, device="cpu")
    if not hasattr(model.adapter, "frame_log_probs"):
        parser.error(f"{args.model}: its adapter ({model.config.adapter}) has no CTC path over LLM tokens")
    rows = read_manifest(args.manifest)
    rows = rows[: args.limit] if args.limit else rows
    audio_seconds = sum(r.duration or 0.0 for r in rows)
    log_probs = ctc_log_probs(model, [r.audio for r in rows], args.batch_size)
    bos = document_start_id(model.tokenizer)
    greedy = [greedy_path(lp) for lp in log_probs]
    words = sum(len(model.ctc_vocab.decode(units).split()) for units in greedy)
    print(f"{len(rows)} files, {audio_seconds / 60:.1f} min of audio, {args.threads} threads; CTC output: "
          f"{search_load(log_probs, CTCBeamOptions())} (default search options), "
          f"{sum(map(len, greedy)) / max(words, 1):.2f} units per word (greedy path)")
    print("| setting | WER | search RTF |\n|---|---|---|")
    for setting in args.settings:
        options = CTCBeamOptions(**json.loads(setting))
        if options.beam_size == 1:
            start = time.perf_counter()
            hyps = [model.ctc_vocab.decode(greedy_path(lp)).strip() for lp in log_probs]
        else:
            search = CTCPrefixBeamSearch(options, lambda items: LLMPrefixScorer(
                model.llm, model.adapter.token_ids, items, bos), model.ctc_vocab.spoken_units())
            start = time.perf_counter()
            with torch.no_grad(), model.text_mode():
                hyps = [model.ctc_vocab.decode(u).strip() for i in range(0, len(log_probs), args.batch_size)
                        for u in search.decode(log_probs[i: i + args.batch_size])]
        wall = time.perf_counter() - start
        wer = word_error_rate([r.text for r in rows], hyps)
        print(f"| {setting} | {100 * wer.rate:.2f}% | {wall / max(audio_seconds, 1e-9):.3f} |", flush=True)


if __name__ == "__main__":
    main()
