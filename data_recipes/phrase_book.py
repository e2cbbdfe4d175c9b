"""Build a model's phrase book: its own replies to typed questions about generated passages and to quiz
questions. Speculative decoding drafts from it where the prompt offers nothing to copy: the model's
own phrasing ("The passage states that", "The answer is:"). See
:class:`speechllm.generation.speculative.PhraseBook`.

    python -m speechllm.data_recipes.phrase_book --model speechllm-starter --count 400 \\
        --out MODEL_FOLDER/phrases.safetensors

The passages are drawn with their own seed (``--seed``), not from any corpus's test rows; the file goes
into the model folder, named by its config.json (``"phrases": "phrases.safetensors"``). docs/decoding.md
has what a book measured on the starter (which ships none).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from speechllm.data_recipes.texts import passage_qa, quiz_items
from speechllm.generation import GenerationOptions, PhraseBook

PASSAGE_PROMPTS = (
    "{passage}\n\n{question}",
    "{passage}\n\nQuestion: {question}",
    "{passage}\n\nQuestion: {question} Answer with the words of the passage.",
)


def prompts(count: int, seed: int = 2026) -> Iterator[str]:
    """``count`` typed prompts: two in three a generated passage with a question about it (in turn
    through :data:`PASSAGE_PROMPTS`), one in three a quiz question."""
    rng = np.random.default_rng(seed)
    quiz = quiz_items()
    for i in range(count):
        if i % 3 == 2 and quiz:
            yield quiz[int(rng.integers(len(quiz)))].question
        else:
            qa = passage_qa(rng)
            yield PASSAGE_PROMPTS[i % len(PASSAGE_PROMPTS)].format(passage=qa.passage, question=qa.question)


def build(model, texts: list[str], max_new_tokens: int = 96, progress: bool = True) -> PhraseBook:
    """The model's greedy replies to ``texts`` (typed, as ``generate(None, text)`` answers them)."""
    options = GenerationOptions(max_new_tokens=max_new_tokens, phrases=False)
    replies = [model.generate(None, text, options)[0].tokens
               for text in tqdm(texts, desc="replies", unit="prompt", disable=not progress)]
    return PhraseBook(replies)


def replies_parser(doc: str, out: str, count: int, seed: int) -> argparse.ArgumentParser:
    """The arguments of a recipe over a model's own replies (this one, the draft head's): ``--model``,
    ``--out``, ``--count``, ``--seed``, ``--threads``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", required=True, help="a speech-LLM: zoo name or folder")
    parser.add_argument("--out", type=Path, required=True, metavar=out)
    parser.add_argument("--count", type=int, default=count, help="prompts to reply to")
    parser.add_argument("--seed", type=int, default=seed)
    parser.add_argument("--threads", type=int, default=2)
    return parser


def load_model(args: argparse.Namespace):
    """``args.model`` (zoo name or folder) on the CPU, in eval mode, on ``args.threads`` threads."""
    from speechllm.speechlm.io import load_speechlm
    from speechllm.zoo import ZOO, resolve

    torch.set_num_threads(args.threads)
    folder = resolve(args.model).path if args.model in ZOO else Path(args.model)
    return load_speechlm(folder, device="cpu").eval()


def main() -> None:
    args = replies_parser(__doc__, "PHRASES.safetensors", 400, 2026).parse_args()
    model = load_model(args)
    book = build(model, list(prompts(args.count, args.seed)))
    book.save(args.out, {"model": args.model, "prompts": str(args.count), "seed": str(args.seed)})
    print(f"{len(book)} replies, {len(book.sam.tokens)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
