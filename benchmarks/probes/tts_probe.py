"""How much of the mel do the TTS speech tokens carry? A per-frame probe.

    .venv/bin/python benchmarks/probes/tts_probe.py \
        --cache runs/tts/cache-1h-t4 --tokenizer runs/tts/tokenizer4

A 2-layer MLP is trained to predict each normalised 50 Hz log-mel frame on its own (no context) from
(a) the token it belongs to and (b) the Whisper encoder frame the tokens are made from; the table
gives the dev MSE of each beside the mel's variance. Tokens whose probe error is close to the variance
carry little of the sound, and no flow model can put it back. ``--cache`` must hold the tokens of
``--tokenizer`` (its ``tokens`` stage).
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import Tensor, nn

from speechllm.tts.data import Corpus, load_corpus
from speechllm.tts.train import read_stage

MEL_MEAN, MEL_STD = -5.0, 2.5


def frames(corpus: Corpus, kind: str) -> tuple[Tensor, Tensor]:
    """Per-frame inputs (token ids or encoder frames) and normalised mel targets."""
    inputs, targets = [], []
    for enc, mel, tokens in zip(corpus.enc, corpus.mel, corpus.tokens, strict=True):
        n = min(len(mel), 2 * len(tokens), len(enc))
        inputs.append(tokens.repeat_interleave(2)[:n] if kind == "token" else enc[:n].float())
        targets.append((mel[:n].float() - MEL_MEAN) / MEL_STD)
    return torch.cat(inputs), torch.cat(targets)


def probe(kind: str, train: Corpus, dev: Corpus, n_tokens: int, steps: int) -> float:
    x, y = frames(train, kind)
    xd, yd = frames(dev, kind)
    first = nn.Embedding(n_tokens, 256) if kind == "token" else nn.Linear(x.shape[1], 256)
    model = nn.Sequential(first, nn.GELU(), nn.Linear(256, 256), nn.GELU(), nn.Linear(256, y.shape[1]))
    optimizer = torch.optim.Adam(model.parameters(), 2e-3)
    for _ in range(steps):
        index = torch.randint(0, len(x), (4096,))
        loss = ((model(x[index]) - y[index]) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return float(((model(xd) - yd) ** 2).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", required=True, help="TTS feature cache holding the tokenizer's tokens")
    parser.add_argument("--tokenizer", required=True, help="tokenizer stage folder (its codebook size)")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config, _ = read_stage(args.tokenizer, "tokenizer")
    n_tokens = math.prod(config["levels"])
    train, dev = load_corpus(args.cache, "train", tokens=True), load_corpus(args.cache, "dev", tokens=True)
    variance = float(frames(dev, "encoder")[1].var())
    print(f"| input | dev MSE (mel variance {variance:.2f}) |\n|---|---|")
    for kind in ("token", "encoder"):
        print(f"| {kind} | {probe(kind, train, dev, n_tokens, args.steps):.3f} |", flush=True)


if __name__ == "__main__":
    main()
