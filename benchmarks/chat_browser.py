"""Hands-free chat in a real browser: end of user speech -> first answer audio, and barge-in.

    .venv/bin/python benchmarks/chat_browser.py --runs 5     # writes benchmarks/results/chat-browser.json

Runs ``tests/test_chat_handsfree.py``'s browser test ``--runs`` times (headless Chromium whose fake
microphone plays three spoken turns; the test presses the record button once, then nothing). Each run
reports, on the page's own clock: the delay from the end of each user turn to its answer's first
audio, and from the third turn's speech onset to the second answer's audio stopping (barge-in). The
answers come from the test's stand-in model (a word every 80 ms, a 0.3 s tone per sentence), so the
delays are the chat's own: turn detection, upload, the page, the voice thread, not an LLM's speed.
Needs an idle machine (the test refuses a load average over 1.5 per core unless forced).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TEST = "tests/test_chat_handsfree.py::test_browser_hands_free_two_turns_then_barge_in"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/chat-browser.json")
    args = parser.parse_args()
    runs, failures = [], 0
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "runs.jsonl"
        env = dict(os.environ, SPEECHLLM_HANDSFREE_LOG=str(log))
        for i in range(args.runs):
            done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TEST],
                                  cwd=REPO, env=env, capture_output=True, text=True)
            failures += done.returncode != 0
            print(f"run {i + 1}: {'passed' if done.returncode == 0 else 'FAILED'}", flush=True)
        runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    if not runs:
        sys.exit("no run measured (is Chromium installed, the machine idle?)")
    waits = [w for run in runs for w in run["end_of_speech_to_audio_ms"]]
    barge = [run["barge_in_ms"] for run in runs]
    result = {
        "command": f"python benchmarks/chat_browser.py --runs {args.runs}",
        "machine": platform.machine(), "cores": os.cpu_count(),
        "runs": args.runs, "failed": failures, "measured": len(runs),
        "end_of_speech_to_audio_ms": {"median": statistics.median(waits), "p90": percentile(waits, 0.9),
                                      "turns": len(waits)},
        "barge_in_ms": {"median": statistics.median(barge), "max": max(barge)},
        "load_average": [round(run["load_average"], 2) for run in runs],
        "each": runs,
    }
    args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("failed", "end_of_speech_to_audio_ms", "barge_in_ms")}))


if __name__ == "__main__":
    main()
