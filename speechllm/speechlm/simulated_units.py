"""Speech-like LLM input made from text: what a ``ctc-posterior`` adapter would give for it.

The ``ctc-posterior`` adapter hands the LLM one vector per emitted CTC unit, the posterior-weighted
mix of the top-k token embeddings. So the skills that live on the LLM side (translate, answer about a
passage, answer a spoken question, follow an instruction) can be learned from *text*: tokenize what
the audio would say into the adapter's own unit vocabulary, corrupt it the way the CTC head errs,
and mix embeddings exactly as the adapter does. No encoder, no audio, short sequences.

How the head errs (:class:`UnitNoise`): a unit is dropped, replaced by a token the head confuses it
with, or followed by a spurious one; a word is respelt as smaller pieces; and every unit is a soft
mix: its own token gets a probability drawn from ``confidence``, the rest goes to confusable
tokens. *Confusable* is read off the trained head itself (:func:`confusable_units`): two tokens
whose rows of the CTC output layer point the same way are the ones its posteriors mix up. A
transcript a real hearing wrote (Whisper's, ``speechllm data heard``) is read as it is, as certain
units (:func:`exact_units`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from speechllm.adapters import AdapterOutput
from speechllm.adapters.base import lengths_to_mask


@dataclass(frozen=True)
class UnitNoise:
    """Per-unit error rates (each example draws a severity in [0, 1] that scales them)."""

    delete: float = 0.10
    substitute: float = 0.20
    insert: float = 0.04
    split: float = 0.10  # a unit respelt as the pieces that spell it
    confidence: tuple[float, float] = (0.35, 1.0)  # range of the unit's own posterior
    mix: int = 4  # confusable tokens that share the rest of a unit's probability
    neighbours: int = 16  # confusable tokens kept per unit

    @classmethod
    def clean(cls) -> UnitNoise:
        return cls(0.0, 0.0, 0.0, 0.0, (1.0, 1.0), 1, 1)


def confusable_units(adapter, n: int = 16, chunk: int = 1024) -> Tensor:
    """[V, n] CTC ids (blank = 0 excluded; row 0 unused): for each unit, the units whose CTC
    output-layer rows are closest in direction to its own (the head's own confusions)."""
    out = adapter.ctc.out[-1] if isinstance(adapter.ctc.out, torch.nn.Sequential) else adapter.ctc.out
    rows = F.normalize(out.weight.detach().float(), dim=-1)  # [V, d]
    rows[0] = 0.0
    table = torch.zeros(rows.shape[0], n, dtype=torch.long)
    for start in range(1, rows.shape[0], chunk):
        sim = rows[start : start + chunk] @ rows.T
        sim[:, 0] = -2.0
        idx = torch.arange(start, min(start + chunk, rows.shape[0]))
        sim[torch.arange(len(idx)), idx] = -2.0  # not itself
        table[idx] = sim.topk(min(n, rows.shape[0] - 2), dim=-1).indices
    return table


class UnitSimulator:
    """Text → (unit ids [n, k], probabilities [n, k]) as a CTC head over ``vocab`` might emit."""

    def __init__(self, vocab, confusable: Tensor, noise: UnitNoise = UnitNoise()):
        self.vocab, self.noise = vocab, noise
        self.confusable = confusable[:, : noise.neighbours].numpy()
        self.size = confusable.shape[0]

    def units(self, text: str, rng: np.random.Generator, severity: float | None = None) -> list[int]:
        """The CTC ids the head would write for ``text``, with deletions, substitutions, insertions
        and respelt words at ``severity`` (drawn uniformly when None)."""
        noise = self.noise
        s = float(rng.uniform()) if severity is None else severity
        out: list[int] = []
        for unit in self.vocab.encode(text):
            r = rng.uniform()
            if r < s * noise.delete:
                continue
            if r < s * (noise.delete + noise.substitute):
                unit = int(self.confusable[unit, rng.integers(self.confusable.shape[1])])
            pieces = [unit]
            if rng.uniform() < s * noise.split:
                pieces = self._pieces(unit) or pieces
            out += pieces
            if rng.uniform() < s * noise.insert:
                out.append(int(self.confusable[unit, rng.integers(self.confusable.shape[1])]))
        return out

    def _pieces(self, unit: int) -> list[int]:
        """A unit spelt with two or more shorter units of the vocabulary (empty when it cannot be)."""
        text = self.vocab.decode([unit])
        if len(text.strip()) < 3:
            return []
        cut = len(text) // 2
        first, second = self.vocab.encode(text[:cut]), self.vocab.encode(text[cut:])
        return first + second if first and second else []

    def posteriors(self, units: Sequence[int], rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        """Each unit as a soft mix: its own id with a probability from ``confidence``, the rest spread
        over up to ``mix - 1`` confusable ids (Dirichlet shares). Returns ids and probs, [n, mix]."""
        n, k = len(units), self.noise.mix
        ids = np.zeros((n, k), dtype=np.int64)
        probs = np.zeros((n, k), dtype=np.float32)
        low, high = self.noise.confidence
        for i, unit in enumerate(units):
            ids[i, 0] = unit
            own = rng.uniform(low, high)
            probs[i, 0] = own
            if k > 1 and own < 1.0:
                others = rng.choice(self.confusable.shape[1], size=k - 1, replace=False)
                ids[i, 1:] = self.confusable[unit, others]
                probs[i, 1:] = (1.0 - own) * rng.dirichlet(np.full(k - 1, 0.5))
        return torch.from_numpy(ids), torch.from_numpy(probs)

    def __call__(self, text: str, rng: np.random.Generator) -> tuple[Tensor, Tensor]:
        units = self.units(text, rng) or self.vocab.encode(text)[:1] or [1]
        return self.posteriors(units, rng)


def exact_units(units: Sequence[int]) -> tuple[Tensor, Tensor]:
    """CTC ids as certain units (``(ids [n, 1], probs [n, 1])`` of ones): a transcript read as it is
    written, the way a speech-LLM that hears through Whisper reads it."""
    return torch.tensor(list(units), dtype=torch.long).reshape(-1, 1), torch.ones(len(units), 1)


def simulated_output(adapter, items: Sequence[tuple[Tensor, Tensor]]) -> AdapterOutput:
    """A batch of simulated units ``(ids [n, k], probs [n, k])`` → the adapter's output (LLM-sized
    embeddings, mask), mixed from the LLM's embedding table the way ``ctc-posterior`` mixes them."""
    if adapter.embeddings is None:
        raise RuntimeError("attach the LLM's embeddings to the adapter first")
    lengths = torch.tensor([len(ids) for ids, _ in items])
    width = max(int(lengths.max()), 1)
    k = max(ids.shape[1] for ids, _ in items)
    ids = torch.ones(len(items), width, k, dtype=torch.long)
    probs = torch.zeros(len(items), width, k)
    for b, (i, p) in enumerate(items):
        ids[b, : len(i), : i.shape[1]] = i
        probs[b, : len(p), : p.shape[1]] = p
    device = adapter.token_ids.device
    table = adapter.embeddings(adapter.token_ids[(ids - 1).clamp(min=0).to(device)])  # [B, T, k, D]
    embeddings = (probs.to(device)[..., None].to(table.dtype) * table).sum(-2)
    mask = lengths_to_mask(lengths.to(device), width)
    return AdapterOutput(embeddings * mask[..., None], mask, None)
