"""A Bible dev set for monitoring runs (not the benchmark's test verses): 40 short verses of the st
recipe's *dev* split (never in a training row), spoken by the benchmark's held-out Kokoro voices, heard
by the starter's translate hearing (Whisper base, memory-prompted second hearing as shipped).
Writes runs/dev-bible.json: srcs, refs, heard."""
import json
import sys

import numpy as np
import soxr
import torch

sys.path.insert(0, "benchmarks")
from translate import HELD_OUT_VOICES  # noqa: E402

import speechllm  # noqa: E402
from speechllm.data_recipes.texts import split_of, verse_pairs  # noqa: E402
from speechllm.text_normalize import spoken_form  # noqa: E402
from speechllm.tts.kokoro import KokoroVoice  # noqa: E402

torch.set_num_threads(2)
pool = [v for v in verse_pairs()
        if len(v.es.split()) <= 14 and len(v.en.split()) <= 18 and split_of(v.en) == "dev"]
rng = np.random.default_rng(11)
chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=40, replace=False))]
voices = {name: KokoroVoice(name, language="es") for name in HELD_OUT_VOICES}
clips = [soxr.resample(voices[HELD_OUT_VOICES[i % 4]].synthesize(v.es), 24_000, 16_000).astype(np.float32)
         for i, v in enumerate(chosen)]
model = speechllm.load("speechllm/weights/starter", task="translate", target="en").model
hearing = model.hearing_for("translate")
heard = [h.text for h in hearing.heard(clips)]
hearing.prompt_for = lambda h: None
once = [h.text for h in hearing.heard(clips)]
json.dump({"srcs": [v.es for v in chosen], "refs": [spoken_form(v.en) for v in chosen], "heard": heard,
           "heard_once": once},
          open("runs/dev-bible.json", "w"), ensure_ascii=False, indent=1)
print("done", len(heard))
