"""Does a translation memory help the cascade's LLM? Text only, no audio.

    python benchmarks/probes/translation_memory.py 0 8:0 8:12 8:20   # k:min_score; 0 = the fixed demos

The benchmark's held-out sentences (``benchmarks/translate.py``: 50 Bible verses, 100 everyday
sentences, same draws) are translated es->en by Gemma 3 270M (int4, greedy, 2 threads) few-shot.
k > 0: the demonstrations are the k pairs of the memory (the Bible minus the held-out verses, as
shipped) nearest the source (idf-weighted shared words), nearest last, when the best scores at least
min_score; else the fixed demonstrations. Prints BLEU per set, how many sentences used the memory,
and wall time.
"""

from __future__ import annotations

import sys
import time

import torch

from speechllm.data_recipes.everyday import held_out_pairs
from speechllm.data_recipes.texts import held_out_verses
from speechllm.data_recipes.translation_memory import bible_memory
from speechllm.llm import load_llm
from speechllm.metrics_bleu import corpus_bleu
from speechllm.speechlm.cascade import _translation_prompt


def main() -> None:
    torch.set_num_threads(2)
    sets = {
        "bible": [(v.es, v.en) for v in held_out_verses()],
        "everyday": held_out_pairs(),
    }
    memory = bible_memory()
    model, tokenizer = load_llm("gemma3-270m")

    @torch.no_grad()
    def complete(prompt: str) -> str:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False,
                             stop_strings=["\n"], tokenizer=tokenizer, pad_token_id=0)[0, ids.shape[1]:]
        return tokenizer.decode(out, skip_special_tokens=True).split("\n")[0].strip()

    for variant in sys.argv[1:] or ["0", "8:12"]:
        k, _, min_score = variant.partition(":")
        for name, pairs in sets.items():
            start, used, hyps = time.perf_counter(), 0, []
            for es, _ in pairs:
                demos = memory.nearest(es, int(k), float(min_score or 0))[::-1] if int(k) else []
                used += bool(demos)
                hyps.append(complete(_translation_prompt(es, "Spanish", "English", demos)))
            bleu = corpus_bleu([en for _, en in pairs], hyps)
            print(f"{variant} {name}: BLEU {bleu.score:.2f}, memory used {used}/{len(pairs)} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
