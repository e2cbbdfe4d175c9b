"""``speechllm data distill``: a teacher voice reads a recipe's texts into a TTS training cache.

    speechllm data distill --hours 10 --out runs/tts/joe [--recipe tts] [--jobs 2]

The project's own voice learns from a teacher (Piper joe by default, deterministic: no noise in
its VITS sampling), so its data is unlimited and its targets are one voice's, with nothing to
average over. Per utterance (one sentence as the teacher's phonemizer cuts it) the cache holds
the teacher's phoneme ids, each id's duration in mel frames (the teacher's own alignment, read
from its duration predictor), the 16 kHz audio and its TTS mel: the layout of
:mod:`speechllm.tts.data` (``phon``/``dur`` beside ``mel``/``wav``; no encoder frames), which the
``acoustic`` and ``vocoder`` stages of ``speechllm tts-train`` read.

Texts and splits are the recipe's (held out by text: a test sentence is never trained on); parts
of :data:`~speechllm.tts.data.PART` recipe items per split are written atomically and skipped when
present, so an interrupted build resumes, and ``--hours`` can grow a cache later.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from speechllm.audio import SAMPLE_RATE, resample
from speechllm.data_recipes.recipes import RECIPES, SPLITS, Item, plan
from speechllm.files import atomic_write_json
from speechllm.tts.data import PART, save_part
from speechllm.tts.mel import MelConfig, mel_spectrogram
from speechllm.zoo import PIPER_VOICE


@dataclass(frozen=True)
class DistillJob:
    path: str
    items: tuple[Item, ...]
    teacher: str
    noise_scale: float
    noise_w: float


def frame_durations(samples: np.ndarray, rate: int, frames: int, hop: int = MelConfig().hop) -> torch.Tensor:
    """Per-id durations in samples at ``rate`` -> durations in mel frames (float) summing to ``frames``."""
    durations = torch.as_tensor(samples, dtype=torch.float32) * (SAMPLE_RATE / rate) / hop
    total = float(durations.sum())
    return durations * (frames / total) if total > 0 else durations


def _distill_part(job: DistillJob) -> int:
    from speechllm.tts.piper import iter_phonemize, phoneme_ids
    from speechllm.tts.text import TextError, prepare_text, sentences

    voice = _teacher(job.teacher)
    rows, arrays = [], {"enc": [], "mel": [], "wav": [], "phon": [], "dur": []}
    for item in job.items:
        try:
            prepared = prepare_text(item.say)
        except TextError:
            continue
        for j, sentence in enumerate(sentences(prepared)):
            for k, phonemes in enumerate(iter_phonemize(sentence, voice.config.espeak_voice)):
                ids = phoneme_ids(phonemes, voice.config.phoneme_id_map)
                audio, samples = voice.synthesize_ids_durations(
                    ids, noise_scale=job.noise_scale, noise_w=job.noise_w
                )
                audio = torch.from_numpy(resample(audio, voice.sample_rate, SAMPLE_RATE))
                mel = mel_spectrogram(audio)[0].T
                if len(mel) < 5:
                    continue
                rows.append({"id": f"{item.recipe}-{item.index:07d}-{j}-{k}", "text": sentence,
                             "speaker": job.teacher, "phonemes": phonemes})
                arrays["enc"].append(torch.zeros(0, 384, dtype=torch.float16))
                arrays["mel"].append(mel.half())
                wav = audio[: len(mel) * MelConfig().hop].clamp(-1, 1)
                arrays["wav"].append((wav * 32767).round().short())
                arrays["phon"].append(torch.tensor(ids, dtype=torch.int16))
                arrays["dur"].append(frame_durations(samples, voice.sample_rate, len(mel)))
    if rows:
        save_part(Path(job.path), rows, **arrays)
    return len(rows)


@lru_cache(maxsize=2)
def _teacher(name: str):
    """One teacher session per process (each pool worker loads its own)."""
    from speechllm.tts.piper import PiperVoice

    return PiperVoice.load(name, threads=1, durations=True)


def distill(
    out: str | Path,
    hours: float,
    recipe: str = "tts",
    seed: int = 0,
    teacher: str = PIPER_VOICE,
    jobs: int = 1,
    splits: tuple[str, ...] = SPLITS,
    noise_scale: float = 0.0,
    noise_w: float = 0.0,
) -> dict[str, int]:
    """Fill ``out`` with the teacher's reading of ``recipe``'s first ``hours``; returns parts per split."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    items = plan(recipe, seed, hours)
    todo, counts = [], {}
    for split in splits:
        chosen = [item for item in items if item.split == split]
        counts[split] = (len(chosen) + PART - 1) // PART
        for start in range(0, len(chosen), PART):
            path = out / f"{split}-{start // PART:03d}.safetensors"
            if not path.is_file():
                todo.append(
                    DistillJob(str(path), tuple(chosen[start : start + PART]), teacher, noise_scale, noise_w)
                )
    _record_source(out, {"recipe": recipe, "seed": seed, "teacher": teacher, "noise_scale": noise_scale,
                         "noise_w": noise_w}, hours)
    t0 = time.time()
    torch.set_num_threads(1)
    pool = multiprocessing.get_context("spawn").Pool(jobs) if jobs > 1 else None
    try:
        for done, n in enumerate((pool.imap_unordered if pool else map)(_distill_part, todo), 1):
            print(f"distill: part {done}/{len(todo)} ({n} utterances, {time.time() - t0:.0f} s)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return counts


def _record_source(out: Path, source: dict, hours: float) -> None:
    """``out/distill.json``: what made the cache. A cache made from other texts or another teacher is
    refused (its parts would mix); more hours of the same source extend it."""
    path = out / "distill.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k, v in source.items() if before.get(k) != v)
        if changed:
            raise ValueError(f"{out}: was distilled with other {', '.join(changed)} "
                             f"({', '.join(f'{k}={before.get(k)!r}' for k in changed)}); use another --out")
        hours = max(hours, float(before.get("hours", 0)))
    atomic_write_json(path, {**source, "hours": hours}, indent=2)


def register_distill(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", type=Path, required=True, metavar="CACHE", help="the TTS cache folder (resumable)"
    )
    parser.add_argument("--hours", type=float, required=True, help="hours of the recipe's texts (estimated)")
    parser.add_argument("--recipe", default="tts", choices=list(RECIPES), help="whose texts and splits (tts)")
    parser.add_argument(
        "--teacher", default=PIPER_VOICE, help=f"a Piper voice: zoo name or .onnx ({PIPER_VOICE})"
    )
    parser.add_argument("--seed", type=int, default=0, help="same seed, same texts (default 0)")
    parser.add_argument("--jobs", "-j", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS, help="which splits")
    parser.add_argument(
        "--noise-scale", type=float, default=0.0, help="the teacher's VITS noise (0: deterministic)"
    )
    parser.add_argument("--noise-w", type=float, default=0.0, help="the teacher's duration noise (0)")


def run_distill(args: argparse.Namespace) -> int:
    counts = distill(
        args.out,
        args.hours,
        args.recipe,
        args.seed,
        args.teacher,
        args.jobs,
        tuple(args.splits),
        args.noise_scale,
        args.noise_w,
    )
    print(f"{args.out}: " + ", ".join(f"{split} {n} parts" for split, n in counts.items()))
    return 0
