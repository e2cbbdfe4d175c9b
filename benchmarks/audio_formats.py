"""Phone and video formats: each example clip written as a 16 kHz WAV and in every container
``write_audio`` makes (AAC in m4a/mp4, Opus in webm/ogg, MP3), then decoded and transcribed.

    .venv/bin/python benchmarks/audio_formats.py --json benchmarks/results/audio-formats.json

Per file: the decoder that read it, the encoder's delay (samples, found by cross-correlation), the
SNR against the WAV once that delay is taken off, the decode time, and whether whisper-tiny.en's
transcript equals the WAV's (all files of a run are transcribed in one batch job).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import speechllm
from speechllm.audio import check_audio_file, load_audio, write_audio

REPO = Path(__file__).resolve().parent.parent
CONTAINERS = ("m4a", "mp4", "webm", "opus", "mp3")


def delay_and_snr(reference: np.ndarray, decoded: np.ndarray, max_delay: int = 2_048) -> tuple[int, float]:
    head = reference[: 2 * 16_000]
    scores = np.correlate(decoded[: len(head) + max_delay], head, mode="valid")
    delay = int(np.argmax(scores))
    n = min(len(reference), len(decoded) - delay)
    error = reference[:n] - decoded[delay: delay + n]
    return delay, float(10 * np.log10(np.sum(reference[:n] ** 2) / max(np.sum(error**2), 1e-12)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="*", type=Path, default=sorted((REPO / "examples").glob("*.flac")))
    parser.add_argument("--model", default=speechllm.BASELINE)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, files = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in args.clips:
            wav = Path(tmp) / clip.stem / "source.wav"
            write_audio(wav, load_audio(clip))
            reference = load_audio(wav)
            files.append(str(wav))
            for suffix in CONTAINERS:
                path = wav.with_suffix(f".{suffix}")
                write_audio(path, reference)
                started = time.perf_counter()
                decoded = load_audio(path)
                seconds = time.perf_counter() - started
                delay, snr = delay_and_snr(reference, decoded)
                rows.append({"clip": clip.stem, "format": suffix, "decoder": check_audio_file(path).decoder,
                             "bytes": path.stat().st_size, "delay_samples": delay, "snr_db": round(snr, 1),
                             "decode_ms": round(1000 * seconds, 1), "path": str(path)})
                files.append(str(path))
        model = speechllm.load(args.model, device="cpu", segmenter="fixed", batch_size=16)
        texts = {source: result.text for source, result in model.transcribe_many(files)}
    for row in rows:
        wav_text = texts[str(Path(row["path"]).with_suffix(".wav"))]
        row.update(text=texts[row.pop("path")], wav_text=wav_text)
        row["same_as_wav"] = row["text"] == wav_text
    print("| clip | format | decoder | delay | SNR dB | decode ms | same text as the WAV |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clip']} | {r['format']} | {r['decoder']} | {r['delay_samples']} | {r['snr_db']} | "
              f"{r['decode_ms']} | {'yes' if r['same_as_wav'] else 'no: ' + r['text']} |")
    same = sum(r["same_as_wav"] for r in rows)
    print(f"{same} of {len(rows)} transcripts equal their WAV's")
    if args.json:
        args.json.write_text(json.dumps({"model": args.model, "same": same, "files": len(rows), "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
