"""``ctc-posterior``: CTC over the LLM's own tokens; each emitted unit becomes a posterior-weighted
mix of the LLM's input embeddings (LegoSLM, Ma et al., 2025).

A CTC head over the LLM tokenizer's vocabulary (plus blank) runs on the encoder output, after
averaging ``stride`` frames (Whisper's 50 frames/s → ~17/s, still ~4x the sub-word rate), with
a low-rank output layer (the vocabulary projection would otherwise cost most of the compute). The
greedy CTC path cuts the utterance into segments as in ``ctc``; a segment's frame posteriors
are averaged, the blank is dropped, the ``top_k`` most likely tokens are kept and renormalised,
and the unit's embedding is ``sum_k p_k * E[token_k]`` with ``E`` the LLM's own (frozen) input
embedding table. The LLM therefore reads something close to the text it would read anyway, so:

* the adapter trains with the CTC loss alone — the LLM need not run in training at all
  (``speechllm finetune --lm-weight 0``), which on a CPU is the difference between minutes and
  days; the LLM loss can still flow through the posteriors in a later fine-tune;
* instructions (translate, answer, summarise) work zero-shot with the unchanged LLM.

The embedding table is attached when the model is built (:meth:`attach_llm`), never saved with
the adapter's weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.adapters.base import Adapter, AdapterOutput, lengths_to_mask
from speechllm.adapters.ctc import BLANK, CTCHead, ctc_loss, ctc_segments, pool_segments


@dataclass(frozen=True)
class CTCPosteriorConfig:
    encoder_dim: int
    llm_dim: int
    vocab: str = "llm"  # units are the LLM's tokens: the only vocabulary that has LLM embeddings
    vocab_size: int = 0  # LLM vocabulary + blank; set when the model is built
    stride: int = 3  # encoder frames averaged per CTC frame (50/s → ~17/s, ~4x the token rate)
    bottleneck: int = 128  # rank of the output layer over the ~50k-token vocabulary (0: full rank)
    n_layers: int = 2
    n_heads: int = 4
    d_ffn: int = 1024
    top_k: int = 8  # tokens mixed per unit
    temperature: float = 1.0  # of the posteriors that weight the embeddings


def downsample(hidden: Tensor, mask: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Average non-overlapping groups of ``stride`` valid frames: [B, T, D] → [B, ceil(T/stride), D]."""
    if stride == 1:
        return hidden, mask
    pad = (-hidden.shape[1]) % stride
    x = F.pad(hidden * mask[..., None], (0, 0, 0, pad)).unflatten(1, (-1, stride))
    m = F.pad(mask, (0, pad)).unflatten(1, (-1, stride))
    counts = m.sum(-1)
    return x.sum(2) / counts.clamp(min=1)[..., None], counts > 0


class CTCPosteriorAdapter(Adapter):
    Config = CTCPosteriorConfig

    def __init__(self, config: CTCPosteriorConfig):
        if config.vocab != "llm":
            raise ValueError("ctc-posterior needs vocab='llm': its units are weighted LLM token embeddings")
        if config.vocab_size < 2:
            raise ValueError("ctc-posterior: vocab_size must be the LLM vocabulary size + 1")
        super().__init__(config)
        c = config
        self.ctc = CTCHead(c.encoder_dim, c.vocab_size, c.n_layers, c.n_heads, c.d_ffn, c.bottleneck)
        self.embeddings: nn.Embedding | None = None

    def attach_llm(self, embeddings: nn.Module) -> None:
        # kept out of the module tree: it belongs to the LLM, is frozen and is not saved here
        self.__dict__["embeddings"] = embeddings

    def unit_embeddings(self, posteriors: Tensor) -> Tensor:
        """[..., V] unit posteriors (blank first) → [..., D_llm] mixes of the top-k token embeddings."""
        if self.embeddings is None:
            raise RuntimeError("ctc-posterior: attach_llm(llm.get_input_embeddings()) before use")
        probs, ids = posteriors[..., BLANK + 1:].topk(self.config.top_k, dim=-1)
        probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-9)
        table = self.embeddings(ids)  # token id = CTC id - 1
        return (probs[..., None].to(table.dtype) * table).sum(-2)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        hidden, mask = downsample(hidden, mask, self.config.stride)
        _, logits = self.ctc(hidden, mask)
        loss = ctc_loss(logits, mask, ctc_targets, ctc_lengths)
        seg, counts = ctc_segments(logits.detach(), mask)
        out_mask = lengths_to_mask(counts, max(int(counts.max()), 1))
        posteriors = (logits / self.config.temperature).softmax(-1)
        units = pool_segments(posteriors, seg, counts)
        out = self.unit_embeddings(units) * out_mask[..., None]
        return AdapterOutput(out, out_mask, loss)

    @torch.no_grad()
    def greedy_units(self, hidden: Tensor, mask: Tensor) -> list[list[int]]:
        """The greedy CTC path's units (CTC ids, blank = 0) per item: the adapter's own transcript."""
        hidden, mask = downsample(hidden, mask, self.config.stride)
        _, logits = self.ctc(hidden, mask)
        seg, counts = ctc_segments(logits, mask)
        labels = logits.argmax(-1)
        units = []
        for b in range(len(counts)):
            keep = seg[b] >= 0
            first = torch.ones_like(keep)
            first[1:] = seg[b][1:] != seg[b][:-1]
            units.append([int(t) for t in labels[b][keep & first] if int(t) != BLANK])
        return units
