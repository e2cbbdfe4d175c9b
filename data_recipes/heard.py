"""``speechllm data heard``: an audio manifest's rows as text rows, their text as a model hears it.

    speechllm data heard corpora/passages-5h/train.jsonl --by speechllm-starter --out heard.jsonl

A speech-LLM that hears through Whisper (``"hearing": "whisper"``, the starter) reads Whisper's
transcript, not what was said: a misheard name, a dropped word, sentences run together with commas.
Text rows (``speechllm data text``) teach its LoRA from what was said, with simulated unit errors at
best. Here each row's ``text`` becomes what the model's own Whisper writes for the row's audio, in
the spoken form the LLM reads (numbers as words), so that ``speechllm finetune --text-train``
teaches it to answer through its real hearing. The row keeps its task, prompt and answer; ``said``
is the original text and ``heard_by`` the model (a translation row's ``source_text`` is what is
heard, its ``text`` stays the translation; ``asr`` rows are left out). The trainer gives such rows
the exact units the model reads at inference (no simulated noise). Rows are appended as they are
heard (one write and an fsync each); ``--resume`` keeps the rows already written and hears only the
rest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from speechllm.manifest import ManifestRow, read_manifest

# Where a manifest row keeps what its audio says, for the tasks whose reply is something else
# (speechllm.train_data.read_text_rows reads them back the same way). An ``asr`` row's reply is what is
# said: hearing it teaches nothing, so such rows are left out.
SPOKEN_FIELD = {"sqa": "text", "st": "source_text", "instruct": "transcript"}


def heard_row(row: ManifestRow, heard: str, by: str) -> dict[str, Any]:
    """``row`` as a text row whose spoken text is ``heard`` (already in spoken form); ``said`` keeps
    what the row had."""
    out = {"task": row.task, "text": row.text, "prompt": row.prompt, "answer": row.answer, "lang": row.lang,
           **row.extra}
    field = SPOKEN_FIELD[row.task]
    out.update({"said": out.get(field), field: heard, "heard_by": by, "heard_from": row.audio})
    return {k: v for k, v in out.items() if v is not None}


def register_heard(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("manifest", type=Path, metavar="MANIFEST",
                        help="an audio manifest (e.g. a synth train split)")
    parser.add_argument("--by", required=True, metavar="MODEL",
                        help="a speech-LLM that hears through Whisper (folder or zoo name), "
                             "e.g. speechllm-starter")
    parser.add_argument("--out", "-o", type=Path, required=True, metavar="OUT.jsonl")
    parser.add_argument("--resume", action="store_true", help="keep the rows OUT has and hear only the rest")
    parser.add_argument("--drop-lost-answers", action="store_true",
                        help="leave out a question's row whose answer the transcript no longer holds (a "
                             "misheard name or number: it cannot be learned from what was heard)")
    parser.add_argument("--limit", type=int, default=None, help="the first N rows of MANIFEST only")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")


def answer_lost(row: dict[str, Any]) -> bool:
    """A question about a passage (an ``sqa`` row with a text prompt) whose answer, a span of the
    passage, no longer appears as whole words in what was heard."""
    from speechllm.speechlm.tasks import NOT_STATED, answer_correct

    answer = row.get("answer")
    asked = row["task"] == "sqa" and bool(row.get("prompt") and answer) and answer != NOT_STATED
    return asked and not answer_correct(answer, row["text"])


def _done(out: Path, keep_row) -> tuple[set[str], int]:
    """The audio of the rows ``out`` already holds, and how many rows it keeps: rows that ``keep_row``
    refuses and a torn last line are dropped from it."""
    done, keep = set(), []
    for line in out.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
            done.add(row["heard_from"])
        except (json.JSONDecodeError, KeyError, TypeError):
            break
        if keep_row(row):
            keep.append(line)
    out.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
    return done, len(keep)


def run_heard(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from speechllm.audio import load_audio
    from speechllm.speechlm.io import load_speechlm, speechlm_path
    from speechllm.speechlm.tasks import example_of
    from speechllm.text_normalize import spoken_form

    rows = read_manifest(args.manifest)[: args.limit]  # every bad row in one error, before a model loads
    left_out = [row.task for row in rows if row.task not in SPOKEN_FIELD]
    if left_out:
        tasks = ", ".join(sorted(set(left_out)))
        print(f"{args.manifest}: {len(left_out)} row(s) of tasks whose reply is the transcript ({tasks}) "
              "left out", file=sys.stderr)
    rows = [row for row in rows if row.task in SPOKEN_FIELD]
    examples = [example_of(row) for row in rows]
    folder = speechlm_path(args.by)
    if folder is None:
        raise ValueError(f"--by {args.by}: not a speech-LLM folder or zoo name")
    if args.out.exists() and not args.resume:
        raise ValueError(f"{args.out} exists: --resume to go on with it, or choose another --out")
    keep_row = (lambda row: not answer_lost(row)) if args.drop_lost_answers else (lambda row: True)
    done, kept = _done(args.out, keep_row) if args.out.exists() else (set(), 0)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_speechlm(folder, device="cpu")
    if model.whisper is None:
        raise ValueError(f"--by {args.by}: it hears through its adapter; only a model that hears through "
                         "Whisper has transcripts to train on")
    todo = [(row, e) for row, e in zip(rows, examples, strict=True) if row.audio not in done]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    written = empty = lost = 0
    with open(args.out, "a", encoding="utf-8") as f:
        for row, example in tqdm(todo, desc="hearing", unit="clip", file=sys.stderr):
            heard = model.hear([load_audio(row.audio)], [example.instruction])[0]
            text = spoken_form(heard.text, lang=heard.language).strip()
            if not text:
                empty += 1
                print(f"{row.audio}: nothing heard; row left out", file=sys.stderr)
                continue
            out = heard_row(row, text, args.by)
            if not keep_row(out):
                lost += 1
                continue
            f.write(json.dumps(out, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            written += 1
    print(f"{written} rows heard by {args.by} -> {args.out} ({kept} kept from before, {empty} heard as "
          f"nothing, {lost} with their answer lost left out)")
    return 0
