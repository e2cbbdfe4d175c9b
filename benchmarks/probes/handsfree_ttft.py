"""Hands-free chat: from the end of a turn to the answer's first text, with the turn heard ahead at its
pause and without.

    python benchmarks/probes/handsfree_ttft.py --voice piper-joe --threads 2 \
        --json benchmarks/results/handsfree-ttft.json

The 12 chat prompts of ``decode_e2e.py`` read by a voice, each fed to a :class:`LiveSession` (Silero
VAD, the chat's turn options: the end after 600 ms of silence, heard ahead at 300 ms) in 100 ms pieces
in real time, then answered by ``ChatEngine.reply`` as the page's hands-free turn is. Measured: the
wall time from the detector's end of the turn to the first text of the answer. The listener waits the
end-of-turn silence on top of it. Whisper's remembered transcripts are cleared before each turn.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from spoken_turns import spoken_prompts
from step_timing import meta

from speechllm.apps.chat.engine import ChatEngine, ChatOptions, TextDelta
from speechllm.apps.chat.live import LiveSession
from speechllm.apps.chat.turns import SAMPLE_RATE, TurnEnded, TurnOptions
from speechllm.zoo import STARTER

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_e2e import CHAT  # noqa: E402

PIECE = SAMPLE_RATE // 10  # the page sends ~100 ms pieces


def turn_to_text(model, engine: ChatEngine, clip: np.ndarray, options: TurnOptions, ahead: bool) -> float:
    """Seconds from the detector's end of the turn to the answer's first text."""
    model.whisper.forget()
    session = LiveSession(options, prehear=model.prehear if ahead else None)
    audio = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.float32), clip, np.zeros(SAMPLE_RATE, np.float32)])
    for i in range(0, len(audio), PIECE):
        fed = time.perf_counter()
        if any(isinstance(e, TurnEnded) for e in session.hear(SAMPLE_RATE, audio[i:i + PIECE])):
            ended, turn = time.perf_counter(), session.take_turn()
            for event in engine.reply([], audio=turn.audio):
                if isinstance(event, TextDelta):
                    return time.perf_counter() - ended
        time.sleep(max(0.0, 0.1 - (time.perf_counter() - fed)))  # the microphone's pace
    raise RuntimeError("the detector found no end of turn")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=STARTER)
    parser.add_argument("--voice", default="piper-joe")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, clips = spoken_prompts(args.model, args.voice)
    options = TurnOptions(pause_ms=300)  # the chat's: end_ms 600, heard ahead at half of it
    engine = ChatEngine(model, None, ChatOptions(max_new_tokens=8, remember_speech=False))
    list(engine.reply([], audio=clips[0]))  # warm up
    results = {"turns": len(CHAT), "end_ms": options.end_ms, "pause_ms": options.pause_ms}
    for label, ahead in (("heard at the end", False), ("heard ahead", True)):
        seconds = [turn_to_text(model, engine, clip, options, ahead) for clip in clips]
        ordered = sorted(seconds)
        results[label] = {"median_s": statistics.median(seconds),
                          "p90_s": ordered[round(0.9 * (len(ordered) - 1))], "seconds": seconds}
        print(f"{label}: turn end -> first text median {results[label]['median_s']:.3f} s, "
              f"p90 {results[label]['p90_s']:.3f} s")
    results["meta"] = meta("handsfree_ttft.py", model=args.model, voice=args.voice)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
