"""BLEU of a speech-LLM folder on the Bible dev set that ``bible_dev_set.py`` writes (runs/dev-bible.json):
from the exact text, the memory-prompted hearing and the hearing once, with K translation-memory examples.

    python benchmarks/probes/bible_dev_probe.py runs/starter-mt4/checkpoints/step-0000050 2

The dev verses are in the shipped memory, so they are left out of it here; the memory-prompted hearing
in runs/dev-bible.json was made with them in it, so only "heard once" is a fair through-speech figure.
"""
import json
import sys
from dataclasses import replace

import torch

import speechllm
from speechllm.metrics_bleu import corpus_bleu
from speechllm.speechlm.memory import TranslationMemory

torch.set_num_threads(1)
d = json.load(open("runs/dev-bible.json"))
model = speechllm.load(sys.argv[1], task="translate", target="en").model
k = int(sys.argv[2]) if len(sys.argv) > 2 else 0
model.config = replace(model.config, memory={"Spanish-English": "memory-es-en.tsv.gz"}, memory_examples=k)
model.loaded_from(speechllm.speechlm_path("speechllm-starter"))
own = {" ".join(t.split()) for t in d["srcs"]}
full = model.translation_memory("es", "en")
model._memories["Spanish-English"] = TranslationMemory((s, t) for s, t in full.pairs if s not in own)
out = {name: round(corpus_bleu(d["refs"], model.translate_text(d[key], "es", "en")).score, 2)
       for name, key in (("exact", "srcs"), ("heard", "heard"), ("heard once", "heard_once"))}
print(sys.argv[1], "examples", k, out, flush=True)
