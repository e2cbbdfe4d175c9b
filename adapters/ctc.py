"""``ctc``: a CTC head on the encoder, and blank-filtering compression (one vector per unit).

A few transformer blocks and a linear layer over a CTC vocabulary (characters by default, or
the LLM tokenizer's own tokens) are trained with the CTC loss on the utterance's transcript.
The greedy CTC path then compresses the frames: blank frames are dropped and each run of one
non-blank label (a *segment*, one emitted unit) is averaged into one vector, projected to the
LLM by an MLP. Speech of ~50 frames/s becomes ~one vector per character (or token).

The segmentation (:func:`ctc_segments`) and the loss (:func:`ctc_loss`) are shared with
``alignformer``. Items whose ``ctc_lengths`` is 0 have no transcript (e.g. translation rows
without the source text) and are left out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.adapters.base import Adapter, AdapterOutput, SelfAttentionBlock, lengths_to_mask, mlp
from speechllm.adapters.vocab import (  # noqa: F401  (re-exported: the CTC vocabularies live in vocab.py)
    BLANK,
    CHARS,
    CTC_VOCABS,
    CharVocab,
    TokenVocab,
    ctc_vocab,
)

# ---------------------------------------------------------------- config and layers


@dataclass(frozen=True)
class CTCConfig:
    encoder_dim: int
    llm_dim: int
    vocab: str = "chars"  # a CTC_VOCABS name
    vocab_size: int = len(CHARS) + 1  # set from the vocabulary when the model is built
    n_layers: int = 2  # transformer blocks between the (frozen) encoder and the CTC output
    n_heads: int = 4
    d_ffn: int = 1024
    hidden_dim: int = 1024  # projector MLP


class CTCHead(nn.Module):
    """Blocks over the encoder output, then frame-wise logits over the CTC vocabulary."""

    def __init__(self, dim: int, vocab_size: int, n_layers: int, n_heads: int, d_ffn: int,
                 bottleneck: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(SelfAttentionBlock(dim, n_heads, d_ffn) for _ in range(n_layers))
        self.ln = nn.LayerNorm(dim)
        # a large vocabulary (the LLM's ~50k tokens) costs most of the compute: a low-rank output helps
        self.out = (nn.Sequential(nn.Linear(dim, bottleneck, bias=False), nn.Linear(bottleneck, vocab_size))
                    if bottleneck else nn.Linear(dim, vocab_size))

    def forward(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """→ (hidden [B, T, D], logits [B, T, V]); both zero on padded frames."""
        x = hidden * mask[..., None]
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln(x) * mask[..., None]
        return x, self.out(x)


def ctc_loss(logits: Tensor, mask: Tensor, targets: Tensor | None,
             target_lengths: Tensor | None) -> Tensor | None:
    """Mean CTC loss (per target unit) over the items that have a transcript, or None."""
    if targets is None or target_lengths is None:
        return None
    has = target_lengths > 0
    if not bool(has.any()):
        return None
    log_probs = logits[has].float().log_softmax(-1).transpose(0, 1)  # [T, B', V]
    return F.ctc_loss(log_probs, targets[has], mask[has].sum(1), target_lengths[has], blank=BLANK,
                      reduction="mean", zero_infinity=True)


def ctc_segments(logits: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Greedy CTC path → (segment id per frame [B, T], -1 on blank/padded frames; count [B]).

    A segment is a run of one non-blank label. An item whose path is all blank gets one
    segment over all its frames, so every item gives at least one vector.
    """
    labels = logits.argmax(-1).masked_fill(~mask, BLANK)
    previous = F.pad(labels[:, :-1], (1, 0), value=BLANK)
    starts = (labels != BLANK) & (labels != previous)
    seg = torch.where(labels != BLANK, starts.cumsum(1) - 1, -1)
    counts = starts.sum(1)
    silent = (counts == 0) & mask.any(1)
    seg = torch.where(silent[:, None] & mask, 0, seg)
    return seg, counts + silent.long()


def pool_segments(x: Tensor, seg: Tensor, counts: Tensor) -> Tensor:
    """Average the frames of each segment: [B, T, D] → [B, max(count), D] (zero past count)."""
    batch, _, dim = x.shape
    n = max(int(counts.max()), 1)
    index = torch.where(seg >= 0, seg, n)  # blank frames go to a spare slot, dropped below
    sums = x.new_zeros(batch, n + 1, dim).scatter_add(1, index[..., None].expand(-1, -1, dim), x)
    sizes = x.new_zeros(batch, n + 1).scatter_add(1, index, torch.ones_like(x[..., 0]))
    return (sums / sizes.clamp(min=1)[..., None])[:, :n]


class CTCAdapter(Adapter):
    Config = CTCConfig

    def __init__(self, config: CTCConfig):
        super().__init__(config)
        c = config
        self.ctc = CTCHead(c.encoder_dim, c.vocab_size, c.n_layers, c.n_heads, c.d_ffn)
        self.proj = mlp(c.encoder_dim, c.hidden_dim, c.llm_dim)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        x, logits = self.ctc(hidden, mask)
        seg, counts = ctc_segments(logits.detach(), mask)
        out_mask = lengths_to_mask(counts, max(int(counts.max()), 1))
        out = self.proj(pool_segments(x, seg, counts)) * out_mask[..., None]
        return AdapterOutput(out, out_mask, ctc_loss(logits, mask, ctc_targets, ctc_lengths))
