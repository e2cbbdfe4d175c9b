"""A corpus of bad inputs, built in a temporary folder, for ``test_bad_inputs.py`` to run every
command through: each must fail in one line naming the input (or write an error row and go on),
never with a traceback, and, where the input can be checked up front, without loading a model.

    corpus = build_corpus(tmp_path, model_dir)   # model_dir: a small speech-LLM folder to damage
    corpus.audio["empty"]                        # -> (path, words the error must contain)
"""

from __future__ import annotations

import json
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile

HUGE = 50_000  # characters: a question or --to no one types


def _wav_header(sample_rate: int, data: bytes) -> bytes:
    """A 16-bit mono PCM WAV header claiming ``sample_rate`` in front of ``data``."""
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, 2 * sample_rate, 2, 16)
    return b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + fmt + b"data" + \
        struct.pack("<I", len(data)) + data


@dataclass(frozen=True)
class Corpus:
    root: Path
    good_wav: Path  # 0.75 s of tone: the one good recording
    audio: dict[str, tuple[Path, str]] = field(default_factory=dict)  # case -> (input, error words)
    a_file: Path = Path()  # a plain file, so that a_file/x cannot be created
    out_dir: Path = Path()  # an existing folder, given where a file is expected
    bad_manifest: Path = Path()  # line 1 good, line 2 malformed JSON, line 3 a row without text
    bad_row: str = ""  # "bad_manifest:2", the way errors name the malformed row
    audio_manifest: Path = Path()  # one row per bad audio case, for data validate --check-audio
    no_audio_dir: Path = Path()
    corrupt_config_model: Path = Path()  # a speech-LLM folder whose config.json is cut short
    truncated_weights_model: Path = Path()  # a speech-LLM folder whose adapter.safetensors is cut short
    corrupt_voice: Path = Path()  # a TTS voice folder whose config.json is not JSON
    huge_text: str = "x" * HUGE


def build_corpus(root: Path, model_dir: Path) -> Corpus:
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(12_000) / 16_000
    good = root / "good.wav"
    soundfile.write(good, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16_000)

    (root / "empty.wav").write_bytes(b"")
    (root / "text.wav").write_text("this is a text file, not a recording\n" * 20)
    (root / "text.mp3").write_text("this is a text file, not a recording\n" * 20)
    (root / "truncated.wav").write_bytes(good.read_bytes()[:40])  # cut inside the header
    (root / "3hz.wav").write_bytes(_wav_header(3, b"\x00\x01" * 16_000))  # 32 KB "of 5,333 s"
    a_file = root / "a_file"
    a_file.write_text("a file, not a folder\n")
    no_audio = root / "no_audio"
    no_audio.mkdir()
    (no_audio / "notes.txt").write_text("no recordings here\n")
    out_dir = root / "out_dir"
    out_dir.mkdir()
    audio = {
        "empty file": (root / "empty.wav", "empty file"),
        "text named .wav": (root / "text.wav", "not a readable audio file"),
        "text named .mp3": (root / "text.mp3", "not a readable audio file"),
        "truncated wav": (root / "truncated.wav", "unreadable audio"),
        "3 Hz header": (root / "3hz.wav", "sample rate 3 Hz"),
        "missing file": (root / "missing.wav", "no such file"),
        "path through a file": (a_file / "clip.wav", "is a file, not a folder"),
        "folder with no audio": (no_audio, "no audio files"),
    }

    manifest = root / "bad_rows.jsonl"
    manifest.write_text(json.dumps({"audio": "good.wav", "text": "a tone"}) + "\n"
                        + '{"audio": "good.wav", "text": \n'
                        + json.dumps({"audio": "good.wav", "task": "asr"}) + "\n")
    audio_manifest = root / "bad_audio.jsonl"
    audio_manifest.write_text("".join(json.dumps({"audio": str(path), "text": "x"}) + "\n"
                                      for path, _ in audio.values() if path != no_audio))

    corrupt = root / "corrupt_config_model"
    shutil.copytree(model_dir, corrupt)
    text = (corrupt / "config.json").read_text()
    (corrupt / "config.json").write_text(text[: len(text) // 2])  # a write cut short
    truncated = root / "truncated_weights_model"
    shutil.copytree(model_dir, truncated)
    weights = (truncated / "adapter.safetensors").read_bytes()
    (truncated / "adapter.safetensors").write_bytes(weights[: len(weights) // 2])
    voice = root / "corrupt_voice"
    voice.mkdir()
    (voice / "config.json").write_text('{"format": "speechllm-tts", "lm": {')

    return Corpus(root=root, good_wav=good, audio=audio, a_file=a_file, out_dir=out_dir,
                  bad_manifest=manifest, bad_row=f"{manifest}:2", audio_manifest=audio_manifest,
                  no_audio_dir=no_audio, corrupt_config_model=corrupt, truncated_weights_model=truncated,
                  corrupt_voice=voice)
