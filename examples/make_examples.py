"""Regenerate the sample recordings in examples/ with the offline voices (flite, espeak-ng, Kokoro).

    python examples/make_examples.py

Writes NAME.flac (16 kHz mono), NAME.txt (the transcript) and manifest.jsonl (the English samples)
beside this file, and the Spanish sample in es/ (``speechllm translate examples/es/library.flac``), apart
from the English clips that tests and benchmarks read as ``examples/*.flac``.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from speechllm.audio import load_audio, write_audio

HERE = Path(__file__).resolve().parent

SAMPLES = [
    ("weather_awb", "flite-awb", ["flite", "-voice", "awb"], "The weather will be sunny tomorrow morning."),
    ("meeting_slt", "flite-slt", ["flite", "-voice", "slt"], "Please send me the report before the meeting."),
    ("train_rms", "flite-rms", ["flite", "-voice", "rms"], "The train to Boston leaves at seven o'clock."),
    ("coffee_espeak", "espeak-en-us", ["espeak-ng", "-v", "en-us", "-s", "150"],
     "I would like a cup of coffee, please."),
]
SPANISH = [("es/library", "jf_alpha", "La biblioteca abre a las nueve de la mañana.")]  # a Kokoro voice


def synthesize(command: list[str], text: str, wav: Path) -> None:
    tool = command[0]
    if shutil.which(tool) is None:
        raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    args = command + (["-t", text, "-o", str(wav)] if tool == "flite" else ["-w", str(wav), text])
    subprocess.run(args, check=True, capture_output=True)


def write_sample(name: str, command: list[str], text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / f"{name}.wav"
        synthesize(command, text, wav)
        write_audio(HERE / f"{name}.flac", load_audio(wav))
    (HERE / f"{name}.txt").write_text(text + "\n", encoding="utf-8")


def write_kokoro_sample(name: str, voice: str, text: str) -> None:
    """Kokoro speaking Spanish (espeak-ng's phonemes): Whisper hears it as Spanish, unlike espeak-ng's
    own Spanish voice, which Whisper base takes for Thai."""
    import soxr

    from speechllm.tts.kokoro import KokoroVoice

    audio = KokoroVoice(voice, language="es").synthesize(text)
    (HERE / name).parent.mkdir(parents=True, exist_ok=True)
    write_audio(HERE / f"{name}.flac", soxr.resample(audio, 24_000, 16_000))
    (HERE / f"{name}.txt").write_text(text + "\n", encoding="utf-8")


def main() -> None:
    rows = []
    for name, speaker, command, text in SAMPLES:
        write_sample(name, command, text)
        rows.append({"audio": f"{name}.flac", "text": text, "task": "asr", "lang": "en", "speaker": speaker})
    for name, voice, text in SPANISH:
        write_kokoro_sample(name, voice, text)
    with open(HERE / "manifest.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"wrote {len(rows) + len(SPANISH)} examples to {HERE}")


if __name__ == "__main__":
    main()
