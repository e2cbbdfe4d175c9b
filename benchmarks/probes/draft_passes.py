"""Forward passes that speculative decoding takes on the decode_e2e workloads (typed passage answers,
copies and corrections, free chat), with and without a phrase book: counts, not times, so they do not
drift with the machine.

Each pass costs at least a step (a step is a pass of one token), and greedy takes one step for each
token after a reply's first, so (tokens - replies) / passes bounds the speedup after the first token
that these drafts can give, however cheap a verify pass gets: ``speedup_bound``.

    python benchmarks/probes/draft_passes.py --phrases PHRASES.safetensors --rows 40 \
        --json benchmarks/results/draft-passes.json

A phrase book is built with ``python -m speechllm.data_recipes.phrase_book``.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from decode_e2e import CHAT, COPY, TYPED_PASSAGE, draft_counts  # noqa: E402

from speechllm import speechlm_path  # noqa: E402
from speechllm.generation import GenerationOptions, PhraseBook  # noqa: E402
from speechllm.manifest import read_manifest  # noqa: E402
from speechllm.speechlm.io import load_speechlm  # noqa: E402
from speechllm.zoo import STARTER  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default=STARTER)
parser.add_argument("--phrases", type=Path, required=True)
parser.add_argument("--manifest", type=Path, default=Path("corpora/sqa-12h/test.jsonl"))
parser.add_argument("--rows", type=int, default=40)
parser.add_argument("--json", type=Path)
args = parser.parse_args()
torch.set_num_threads(2)
model = load_speechlm(speechlm_path(args.model), device="cpu").eval()
book = PhraseBook.read(args.phrases)
rows = [r for r in read_manifest(args.manifest) if r.prompt][:args.rows]
workloads = {
    "passage answers, typed passage": [TYPED_PASSAGE.format(passage=r.text, question=r.prompt) for r in rows],
    "quotes and corrections, typed": [COPY[i % 2].format(passage=r.text) for i, r in enumerate(rows)],
    "chat, typed": CHAT}
options = GenerationOptions(max_new_tokens=96)
command = " ".join(["python benchmarks/probes/draft_passes.py", *sys.argv[1:]])
results = {"rows": [], "meta": {"command": command, "phrase_book_replies": len(book),
                                "options": repr(options)}}
for name, texts in workloads.items():
    for label, phrases in (("without", None), ("with", book)):
        counts = draft_counts(model, [None] * len(texts), texts, options, phrases)
        bound = (counts["tokens"] - len(texts)) / max(counts["passes"], 1)
        results["rows"].append({"workload": name, "phrase_book": label, "replies": len(texts), **counts,
                                "speedup_bound": bound})
        print(f"{name:32s} {label:8s} " + " ".join(f"{k} {v}" for k, v in counts.items())
              + f" bound {bound:.2f}x", flush=True)
if args.json:
    args.json.write_text(json.dumps(results, indent=1) + "\n")
