"""Voice chat latency: how long after a spoken turn the first text and the first audio arrive.

    .venv/bin/python benchmarks/chat_latency.py --model speechllm-starter --voice piper-joe
    .venv/bin/python benchmarks/chat_latency.py --untrained      # speed only: a random adapter

Each turn is one recording from examples/ answered through ``speechllm.apps.chat.ChatEngine``
(the same path as the page, without the browser): time to the first text piece, time to the
first audio chunk, total time for the whole spoken answer, and the answer's audio length. The
first turn is a warm-up and not counted. ``--untrained`` builds whisper-tiny.en + a randomly
initialised adapter + SmolLM2-135M (the real sizes, so the timings are real; the answers are not).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from speechllm.zoo import PIPER_VOICE, STARTER

REPO = Path(__file__).resolve().parent.parent


def show(seconds: float | None) -> str:
    return f"{seconds:.2f}" if seconds is not None else "-"


def untrained_model(folder: Path) -> str:
    from speechllm.speechlm import SpeechLLM, SpeechLLMConfig, save_speechlm

    torch.manual_seed(0)
    save_speechlm(SpeechLLM.build(SpeechLLMConfig(adapter="linear")), folder)
    return str(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=STARTER, help="speech-LLM folder or zoo name")
    parser.add_argument("--untrained", action="store_true", help="time an untrained model of the real sizes")
    parser.add_argument("--voice", default=PIPER_VOICE)
    parser.add_argument("--quant", default="saved", help="saved | fp32 | int8 | int4")
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from speechllm.apps.chat import (
        ChatEngine,
        ChatOptions,
        SpeechChunk,
        TextDelta,
        load_chat_model,
        load_voice,
    )

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        name = untrained_model(Path(tmp) / "model") if args.untrained else args.model
        t0 = time.perf_counter()
        model = load_chat_model(name, args.quant, "cpu")
        voice = load_voice(args.voice)
        kind = "(untrained) " if args.untrained else ""
        print(f"model {kind}{name}, voice {args.voice}, quant {args.quant}, {args.threads} threads; "
              f"loaded in {time.perf_counter() - t0:.1f} s")
    engine = ChatEngine(model, voice, ChatOptions(max_new_tokens=args.max_new_tokens, remember_speech=False))
    clips = sorted((REPO / "examples").glob("*.flac"))
    rows = []
    print("| turn | first text s | first audio s | total s | answer audio s | text pieces |")
    print("|---|---|---|---|---|---|")
    for turn in range(args.turns + 1):
        clip = clips[turn % len(clips)]
        start = time.perf_counter()
        first_text = first_audio = None
        audio_seconds, pieces = 0.0, 0
        for event in engine.reply([], audio=clip):
            now = time.perf_counter() - start
            if isinstance(event, TextDelta):
                first_text = first_text if first_text is not None else now
                pieces += 1
            elif isinstance(event, SpeechChunk):
                first_audio = first_audio if first_audio is not None else now
                audio_seconds += len(event.samples) / event.sample_rate
        total = time.perf_counter() - start
        if turn == 0:
            continue  # warm-up
        rows.append((first_text, first_audio, total, audio_seconds))
        print(f"| {clip.stem} | {show(first_text)} | {show(first_audio)} | {total:.2f} | "
              f"{audio_seconds:.1f} | {pieces} |", flush=True)
    firsts = [r[1] for r in rows if r[1] is not None]
    if firsts:
        print(f"median time to first audio: {statistics.median(firsts):.2f} s; median time to first text: "
              f"{statistics.median(r[0] for r in rows if r[0] is not None):.2f} s")


if __name__ == "__main__":
    main()
