"""A folder of "your own recordings" for the fine-tuning walk-through (docs/fine-tuning.md): one synthetic
speaker that the corpus recipes hold out of every training split, reading texts that are held out too.

    python examples/make_voice_folder.py --speaker flite:slt --count 300 --out my_voice/
    python examples/make_voice_folder.py --language es --count 200 --out es_voice/

Writes NNNN.wav (16 kHz mono) and NNNN.txt (the transcript) per utterance: the layout that
``speechllm finetune --train my_voice/`` imports. The texts are fortunes and generated sentences
(numbers, dates, money) whose text hash puts them in the recipes' test split; the held-out English
speakers are flite ``slt`` and ``awb`` and Piper ``joe``. ``--language es``: held-out Bible verses in
Spanish (up to 20 words), read by default by a held-out espeak-ng Latin American voice. Same arguments,
same folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from speechllm.audio import write_audio
from speechllm.data_recipes import texts
from speechllm.data_recipes.recipes import EN_TEST_SPEAKERS, ES_TEST, split_of
from speechllm.data_recipes.voices import Speaker, check_speakers, synthesize


def held_out_texts(count: int, seed: int, max_words: int = 30) -> list[str]:
    """``count`` texts of the test split, fortunes and generated sentences in turn, shuffled."""
    pools = [[t for t in pool if split_of(t) == "test" and 3 <= len(t.split()) <= max_words]
             for pool in (texts.fortunes(), texts.generated_sentences())]
    rng = np.random.default_rng(seed)
    for pool in pools:
        rng.shuffle(pool)
    mixed = [t for pair in zip(*pools, strict=False) for t in pair]
    if len(mixed) < count:
        raise SystemExit(f"only {len(mixed)} held-out texts available, asked for {count}")
    return mixed[:count]


def held_out_verses(count: int, seed: int) -> list[str]:
    """``count`` Spanish Bible verses of the test split (up to 20 words)."""
    return [v.es for v in texts.held_out_verses(count=count, max_words=20, seed=seed)]


LANGUAGES = {"en": (held_out_texts, "flite:slt", EN_TEST_SPEAKERS),  # texts, default speaker, held-out ones
             "es": (held_out_verses, ES_TEST.speakers[0].id, ES_TEST.speakers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--language", choices=LANGUAGES, default="en", help="what the recordings say")
    parser.add_argument("--speaker", default=None,
                        help="a speaker id (default: a held-out one, flite:slt for English)")
    parser.add_argument("--count", type=int, default=300, help="utterances")
    parser.add_argument("--out", type=Path, required=True, help="folder to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    held_out, default_speaker, held_out_speakers = LANGUAGES[args.language]
    speaker = Speaker.parse(args.speaker or default_speaker)
    check_speakers([speaker])
    if speaker not in held_out_speakers:
        print(f"note: {speaker.id} is not one of the held-out speakers; the starter model may have heard it")
    args.out.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for i, text in enumerate(held_out(args.count, args.seed)):
        wav, txt = args.out / f"{i:04d}.wav", args.out / f"{i:04d}.txt"
        if not (wav.exists() and txt.exists()):  # resumable
            audio = synthesize(speaker, text)
            write_audio(wav, audio)
            txt.write_text(text + "\n", encoding="utf-8")
        seconds += wav.stat().st_size / 32000
    print(f"{args.count} recordings of {speaker.id} ({seconds / 60:.1f} min) in {args.out}")


if __name__ == "__main__":
    main()
