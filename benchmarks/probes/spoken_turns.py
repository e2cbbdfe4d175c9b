"""The chat's spoken turns against its typed ones: the 12 chat prompts of ``decode_e2e.py`` read by a
voice, each sent to ``ChatEngine.reply`` as a recording alone, with the model's ``spoken_questions``
set each way, beside the same prompts typed.

    python benchmarks/probes/spoken_turns.py --voice piper-joe --threads 2 \
        --json benchmarks/results/spoken-turns.json

Per setting: the replies' mean length in words, how many equal the typed turn's reply word for word,
and the mean seconds a turn. ``heard_exactly`` counts the clips whose transcript (the model's own
``transcribe``) matches the prompt after normalisation: where it does not, a spoken reply may differ
from the typed one for that reason alone.
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from step_timing import meta

from speechllm import speechlm_path
from speechllm.apps.chat.engine import ChatEngine, ChatOptions, TextDelta
from speechllm.apps.chat.voices import load_voice
from speechllm.audio import resample
from speechllm.speechlm import instruction
from speechllm.speechlm.io import load_speechlm
from speechllm.text_normalize import normalize
from speechllm.zoo import STARTER

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_e2e import CHAT  # noqa: E402


def spoken(voice, text: str) -> np.ndarray:
    """``text`` read by ``voice``, at 16 kHz."""
    return resample(np.concatenate(list(voice.stream(text))), voice.sample_rate)


def spoken_prompts(model: str, voice: str):
    """(the speech-LLM ``model``, the 12 chat prompts of ``decode_e2e.py`` read by ``voice``)."""
    reader = load_voice(voice)
    return load_speechlm(speechlm_path(model)), [spoken(reader, text) for text in CHAT]


def reply(engine: ChatEngine, audio=None, text=None) -> tuple[str, float]:
    start = time.perf_counter()
    answer = "".join(e.text for e in engine.reply([], audio=audio, text=text) if isinstance(e, TextDelta))
    return answer.strip(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=STARTER)
    parser.add_argument("--voice", default="piper-joe", help="the voice that reads the prompts")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, clips = spoken_prompts(args.model, args.voice)
    heard = [g.text for g in model.generate(clips, instruction("transcribe"))]
    engine = ChatEngine(model, None, ChatOptions(max_new_tokens=args.max_new_tokens, remember_speech=False))
    typed = [reply(engine, text=text) for text in CHAT]
    settings, shipped = {}, model.config
    for setting in ("text", "lora"):
        model.config = replace(shipped, spoken_questions=setting)
        answers = [reply(engine, audio=clip) for clip in clips]
        settings[setting] = {
            "mean_words": sum(len(a.split()) for a, _ in answers) / len(answers),
            "equal_to_typed": sum(a == t for (a, _), (t, _) in zip(answers, typed, strict=True)),
            "mean_turn_s": sum(s for _, s in answers) / len(answers),
            "replies": [a for a, _ in answers],
        }
        print(f"spoken_questions={setting}: {settings[setting]['mean_words']:.1f} words a reply, "
              f"{settings[setting]['equal_to_typed']}/{len(CHAT)} equal to the typed reply, "
              f"{settings[setting]['mean_turn_s']:.2f} s a turn")
    model.config = shipped
    results = {
        "turns": len(CHAT),
        "shipped": shipped.spoken_questions,
        "heard_exactly": sum(normalize(h) == normalize(t) for h, t in zip(heard, CHAT, strict=True)),
        "typed": {"mean_words": sum(len(t.split()) for t, _ in typed) / len(typed),
                  "mean_turn_s": sum(s for _, s in typed) / len(typed), "replies": [t for t, _ in typed]},
        "spoken": settings,
        "heard": heard,
        "meta": meta("spoken_turns.py", model=args.model, voice=args.voice,
                     max_new_tokens=args.max_new_tokens),
    }
    print(f"typed: {results['typed']['mean_words']:.1f} words a reply; heard exactly "
          f"{results['heard_exactly']}/{len(CHAT)}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
