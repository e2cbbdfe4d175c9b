"""A cold `speechllm ask FILE QUESTION`: wall time of a fresh process, and where it goes.

    .venv/bin/python benchmarks/cold_start.py --models speechllm-starter speechllm-translate \
        --json benchmarks/results/cold-start.json

Each model first answers once untimed (that run converts a GGUF into the cache if it is not there
yet; the files are then in the OS page cache, as they are for a user's second question). Then, per
run: the command itself in a fresh process (``wall_s``), and a fresh Python process that times its
phases the way the command runs them: importing the toolkit with torch and transformers
(``import_s``), ``speechllm.load`` (``load_s``: what is left to import, e.g. peft, and the weights),
and the answer (``answer_s``). Medians over ``--runs``.
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
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(Path(sys.executable).parent / "speechllm")]  # the console script users run

PHASE_KEYS = ("import_s", "load_s", "answer_s")
PHASES = """
import json, sys, time
start = time.perf_counter()
import speechllm
import speechllm.speechlm.io, speechllm.speechlm.transcriber, speechllm.llm  # torch, transformers
imported = time.perf_counter()
model = speechllm.load(sys.argv[1], task="passage-question", prompt=sys.argv[3])
loaded = time.perf_counter()
text = model.transcribe(sys.argv[2]).text
done = time.perf_counter()
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported, "answer_s": done - loaded,
                  "answer": text}))
"""


def ask(model: str, audio: str, question: str, env: dict) -> tuple[float, str]:
    """Wall seconds of one ``speechllm ask`` process, and its answer."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "answer.jsonl"
        start = time.perf_counter()
        subprocess.run([*CLI, "ask", audio, question, "--model", model, "--quiet", "--output", str(out)],
                       check=True, env=env, cwd=ROOT)
        wall = time.perf_counter() - start
        return wall, json.loads(out.read_text().splitlines()[0])["text"]


def phases(model: str, audio: str, question: str, env: dict) -> dict:
    done = subprocess.run([sys.executable, "-c", PHASES, model, audio, question], check=True, env=env,
                          cwd=ROOT, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["speechllm-starter"])
    parser.add_argument("--audio", default="examples/meeting_slt.flac")
    parser.add_argument("--question", default="What should be sent before the meeting?")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = dict(os.environ)
    results = []
    for model in args.models:
        ask(model, args.audio, args.question, env)  # untimed: fills the conversion cache
        walls, parts = [], []
        for _ in range(args.runs):
            wall, answer = ask(model, args.audio, args.question, env)
            walls.append(wall)
            parts.append(phases(model, args.audio, args.question, env))
        result = {
            "model": model,
            "wall_s": round(statistics.median(walls), 2),
            "wall_s_runs": [round(w, 2) for w in walls],
            **{k: round(statistics.median(p[k] for p in parts), 2) for k in PHASE_KEYS},
            "answer": answer,
        }
        print(json.dumps(result, ensure_ascii=False), flush=True)
        results.append(result)
    if args.json:
        args.json.write_text(json.dumps({
            "command": " ".join(["python benchmarks/cold_start.py", *sys.argv[1:]]),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "audio": args.audio,
            "question": args.question,
            "runs": args.runs,
            "results": results,
        }, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
