"""Does a translation memory help the cascade's LLM on Bible verses? Text only, no audio.

    python benchmarks/probes/translation_memory.py 0 4 8      # k demonstrations; 0 = the fixed four

The 50 held-out verses of ``benchmarks/translate.py`` (same draw) are translated es->en by Gemma 3 270M
(int4, greedy, one thread) few-shot. k > 0: the demonstrations are the k verse pairs of the rest of the
Bible whose Spanish shares the most words with the source (idf-weighted), nearest last. Prints BLEU and
wall time per k. A probe for the next step of ``speechllm-translate`` (the shipped prompt uses fixed
demonstrations).
"""

from __future__ import annotations

import collections
import math
import re
import sys
import time

import numpy as np
import torch

from speechllm.data_recipes.texts import verse_pairs
from speechllm.llm import load_llm
from speechllm.metrics_bleu import corpus_bleu
from speechllm.speechlm.cascade import _translation_prompt

WORD = re.compile(r"\w+")


def held_out(max_words: int = 14, count: int = 50, seed: int = 7):
    """The verses benchmarks/translate.py --build speaks (same filter, same draw)."""
    rng = np.random.default_rng(seed)
    pool = [v for v in verse_pairs() if len(v.es.split()) <= max_words and len(v.en.split()) <= max_words + 4]
    return [pool[i] for i in sorted(rng.choice(len(pool), size=count, replace=False))]


class Memory:
    """Translation pairs, looked up by idf-weighted shared words of the source side."""

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs
        self.index: dict[str, list[int]] = collections.defaultdict(list)
        for i, (source, _) in enumerate(pairs):
            for w in set(WORD.findall(source.lower())):
                self.index[w].append(i)
        self.idf = {w: math.log(len(pairs) / (1 + len(ids))) for w, ids in self.index.items()}

    def nearest(self, text: str, k: int) -> list[tuple[str, str]]:
        score: collections.Counter = collections.Counter()
        for w in set(WORD.findall(text.lower())):
            for i in self.index.get(w, ()):
                score[i] += self.idf[w]
        return [self.pairs[i] for i, _ in score.most_common(k)]


def main() -> None:
    torch.set_num_threads(1)
    verses = held_out()
    kept = {v.ref for v in verses}
    memory = Memory([(v.es, v.en) for v in verse_pairs() if v.ref not in kept and len(v.es.split()) <= 30])
    model, tokenizer = load_llm("gemma3-270m")

    @torch.no_grad()
    def complete(prompt: str) -> str:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                             stop_strings=["\n"], tokenizer=tokenizer, pad_token_id=0)[0, ids.shape[1]:]
        return tokenizer.decode(out, skip_special_tokens=True).split("\n")[0].strip()

    for k in map(int, sys.argv[1:] or ["0", "4"]):
        start = time.perf_counter()
        hyps = []
        for v in verses:
            if k:
                demos = memory.nearest(v.es, k)[::-1]
                prompt = "\n".join([f"Spanish: {s}\nEnglish: {e}\n" for s, e in demos]
                                   + [f"Spanish: {v.es}\nEnglish:"])
            else:
                prompt = _translation_prompt(v.es, "Spanish", "English")
            hyps.append(complete(prompt))
        bleu = corpus_bleu([v.en for v in verses], hyps)
        print(f"k={k}: BLEU {bleu.score:.2f} ({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
