"""Hands-free turn-taking delays that come from the detector itself (no browser, no network).

    .venv/bin/python benchmarks/chat_turns.py            # writes benchmarks/results/chat-turns.json

Each speech clip in examples/ is put between 1.0 s and 1.5 s of silence and fed to
``speechllm.apps.chat.turns.TurnDetector`` (Silero VAD, default ``TurnOptions``) in 100 ms pieces, as
the page streams its microphone. For each clip: how long after the speech really starts the
onset is known (what a barge-in waits for before the page can be told), and how long after it
really ends the turn is closed (what the answer waits for). Speech edges are where the clip first
and last exceeds 0.02 in amplitude. A browser adds its recorder, the upload and the page's update
on top of these.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from speechllm.apps.chat.turns import SAMPLE_RATE, TurnDetector, TurnEnded, TurnOptions

REPO = Path(__file__).resolve().parent.parent
PIECE = SAMPLE_RATE // 10  # 100 ms, as the page sends them


def delays(detector: TurnDetector, clip: np.ndarray) -> tuple[float, float, float]:
    """(onset known after, end known after, seconds of CPU per second of audio) for one clip."""
    voiced = np.flatnonzero(np.abs(clip) > 0.02)
    lead = SAMPLE_RATE
    start, end = (lead + voiced[0]) / SAMPLE_RATE, (lead + voiced[-1]) / SAMPLE_RATE
    audio = np.concatenate([np.zeros(lead, np.float32), clip, np.zeros(3 * SAMPLE_RATE // 2, np.float32)])
    detector.reset()
    onset = closed = None
    began = time.perf_counter()
    for i in range(0, len(audio), PIECE):
        for event in detector.push(audio[i:i + PIECE]):
            now = (i + PIECE) / SAMPLE_RATE  # the piece that completed it has just arrived
            if isinstance(event, TurnEnded):
                closed = now - end
            elif onset is None:
                onset = now - start
    if onset is None or closed is None:
        raise RuntimeError("the detector missed a clip's turn")
    return onset, closed, (time.perf_counter() - began) / (len(audio) / SAMPLE_RATE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/chat-turns.json")
    args = parser.parse_args()
    from speechllm.audio import load_audio

    options = TurnOptions()
    detector = TurnDetector(options=options)
    rows = []
    for path in sorted((REPO / "examples").glob("*.flac")):
        onset, closed, rtf = delays(detector, load_audio(path))
        rows.append({"clip": path.name, "onset_known_after_ms": round(1000 * onset),
                     "turn_closed_after_ms": round(1000 * closed), "cpu_per_audio_second": round(rtf, 4)})
        print(f"{path.name:22s} onset known after {1000 * onset:4.0f} ms, turn closed after "
              f"{1000 * closed:4.0f} ms, CPU {rtf:.4f} s per audio s")
    summary = {key: statistics.median(row[key] for row in rows)
               for key in ("onset_known_after_ms", "turn_closed_after_ms", "cpu_per_audio_second")}
    print("median:", summary)
    result = {"options": options.__dict__, "piece_ms": 100, "clips": rows, "median": summary}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
