"""``speechllm serve`` under load: requests/s and p50/p90 latency for 1, 4 and 16 concurrent clients.

    .venv/bin/python benchmarks/serve.py                       # whisper-tiny.en, the shipped ASR path
    .venv/bin/python benchmarks/serve.py --model speechllm-starter --concurrency 1 4

The real command (``speechllm serve``, a separate process on a free loopback port) is driven by the
official ``openai`` client, one thread per client, each sending 5 s clips (an examples/ sentence
padded with silence to 5.0 s) to ``/v1/audio/transcriptions`` back to back. Every answer is scored
against the sentence (WER), so a fast wrong server does not look good. In the same run: the model
called directly, one clip at a time (no HTTP, no batching), and, unless ``--no-batch1``, the server
with ``--batch-size 1`` at the highest concurrency: the batching's own share of the gain.
Writes benchmarks/results/serve.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile

from speechllm.zoo import DEFAULT_ASR

REPO = Path(__file__).resolve().parent.parent
CLIP_SECONDS = 5.0


def clips() -> list[tuple[str, bytes, str]]:
    """(name, 16 kHz wav bytes of exactly 5.0 s, reference text) for each examples/ sentence."""
    from speechllm.audio import load_audio

    out = []
    for path in sorted((REPO / "examples").glob("*.flac")):
        audio = load_audio(path)[: int(CLIP_SECONDS * 16000)]
        audio = np.pad(audio, (0, int(CLIP_SECONDS * 16000) - len(audio)))
        buf = io.BytesIO()
        soundfile.write(buf, audio, 16000, format="WAV", subtype="PCM_16")
        out.append((path.stem + ".wav", buf.getvalue(), path.with_suffix(".txt").read_text().strip()))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, model: str, batch_size: int, threads: int, segmenter: str):
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "speechllm.apps.cli", "serve", "--model", model, "--voice", "none",
             "--port", str(self.port), "--batch-size", str(batch_size), "--segmenter", segmenter,
             "--max-queue", "256", "--log-level", "warning"], env=env, cwd=REPO)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        import httpx

        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"speechllm serve exited with {self.proc.returncode}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.5)
        raise RuntimeError("speechllm serve did not start in 600 s")

    def __exit__(self, *exc):
        self.proc.terminate()
        self.proc.wait(timeout=60)


def drive(url: str, model: str, clients: int, requests: int, data: list) -> dict:
    import openai

    from speechllm.metrics import word_error_rate

    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)
    jobs = [data[i % len(data)] for i in range(requests)]

    def one(job):
        name, wav, _ = job
        start = time.perf_counter()
        text = client.audio.transcriptions.create(model=model, file=(name, wav)).text
        return time.perf_counter() - start, text

    client.audio.transcriptions.create(model=model, file=jobs[0][:2])  # warm-up, not counted
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, jobs))
    wall = time.perf_counter() - start
    latencies = sorted(r[0] for r in results)
    wer = word_error_rate([j[2] for j in jobs], [r[1] for r in results]).rate
    return {"clients": clients, "requests": requests, "seconds": round(wall, 2),
            "requests_per_s": round(requests / wall, 3),
            "audio_seconds_per_s": round(requests * CLIP_SECONDS / wall, 2),
            "p50_s": round(float(np.percentile(latencies, 50)), 3),
            "p90_s": round(float(np.percentile(latencies, 90)), 3), "wer": round(wer, 4)}


def direct(model: str, threads: int, segmenter: str, requests: int, data: list) -> dict:
    """The transcriber called in this process, one clip at a time: the cost of the model alone."""
    import torch

    import speechllm
    from speechllm.metrics import word_error_rate

    torch.set_num_threads(threads)
    transcriber = speechllm.load(model, segmenter=segmenter)
    audio = [soundfile.read(io.BytesIO(wav), dtype="float32")[0] for _, wav, _ in data]
    transcriber.transcribe(audio[0])  # warm-up
    texts, latencies = [], []
    start = time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        texts.append(transcriber.transcribe(audio[i % len(audio)]).text)
        latencies.append(time.perf_counter() - t)
    wall = time.perf_counter() - start
    wer = word_error_rate([data[i % len(data)][2] for i in range(requests)], texts).rate
    return {"clients": 1, "requests": requests, "seconds": round(wall, 2),
            "requests_per_s": round(requests / wall, 3),
            "p50_s": round(float(np.percentile(latencies, 50)), 3),
            "p90_s": round(float(np.percentile(latencies, 90)), 3), "wer": round(wer, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_ASR)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rounds", type=int, default=3,
                        help="requests per level: rounds x clients (at least 8)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads of the server (and the direct run)")
    parser.add_argument("--segmenter", default="auto", choices=["auto", "vad", "fixed"])
    parser.add_argument("--no-batch1", action="store_true", help="skip the --batch-size 1 comparison")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()

    data = clips()
    count = {c: max(8, args.rounds * c) for c in args.concurrency}
    report = {"model": args.model, "clip_seconds": CLIP_SECONDS, "batch_size": args.batch_size,
              "threads": args.threads, "segmenter": args.segmenter, "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} CPUs", "load_average_at_start": os.getloadavg()[0]}
    report["direct"] = direct(args.model, args.threads, args.segmenter, count[min(args.concurrency)], data)
    print("direct, one at a time:", report["direct"], flush=True)
    report["server"] = []
    with ServeProcess(args.model, args.batch_size, args.threads, args.segmenter) as server:
        for clients in args.concurrency:
            row = drive(server.url, args.model, clients, count[clients], data)
            report["server"].append(row)
            print(f"batch {args.batch_size}:", row, flush=True)
    if not args.no_batch1:
        top = max(args.concurrency)
        with ServeProcess(args.model, 1, args.threads, args.segmenter) as server:
            report["server_batch1"] = drive(server.url, args.model, top, count[top], data)
        print("batch 1:", report["server_batch1"], flush=True)
    report["load_average_at_end"] = os.getloadavg()[0]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
