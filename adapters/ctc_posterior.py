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

import string
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.adapters.base import Adapter, AdapterOutput, lengths_to_mask, spec_augment
from speechllm.adapters.ctc import BLANK, CTCHead, TokenVocab, ctc_loss, ctc_segments, pool_segments


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
    restrict_vocab: bool = True  # keep only the tokens of the training transcripts (fit_vocabulary)
    vocab_min_count: int = 1  # ...seen at least this often; rarer ones are respelt with kept tokens
    time_mask: float = 0.0  # training only: share of frames zeroed in spans (SpecAugment)
    channel_mask: float = 0.0  # training only: share of feature channels zeroed
    temperature: float = 1.0  # of the posteriors that weight the embeddings
    blank_penalty: float = 0.0  # subtracted from the blank logit of the CTC transcript (fewer dropped tokens)


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
        # CTC id k (k >= 1) is LLM token token_ids[k - 1]: the whole vocabulary, or a subset
        self.register_buffer("token_ids", torch.arange(c.vocab_size - 1))
        self.embeddings: nn.Embedding | None = None
        self._vocab = None

    def attach_llm(self, embeddings: nn.Module) -> None:
        # kept out of the module tree: it belongs to the LLM, is frozen and is not saved here
        self.__dict__["embeddings"] = embeddings

    def ctc_vocabulary(self, tokenizer) -> TokenVocab:
        key = (id(tokenizer), self.token_ids.data_ptr(), len(self.token_ids))
        if self._vocab is None or self._vocab[0] != key:
            self._vocab = (key, TokenVocab(tokenizer, self.token_ids.tolist()))
        return self._vocab[1]

    def fit_vocabulary(self, tokenizer, texts: Iterable[str]) -> None:
        if self.config.restrict_vocab:
            self.restrict_vocabulary(tokenizer, texts)

    def restrict_vocabulary(self, tokenizer, texts: Iterable[str]) -> int:
        """Keep only the LLM tokens that ``texts`` use (plus single characters), before training.

        A 50k-token output layer and softmax cost most of this adapter's compute; a corpus uses a
        fraction of them, and a token never seen in training cannot be learnt anyway. Tokens seen
        fewer than ``vocab_min_count`` times are left out too and respelt from kept ones: a few
        hours of speech teach a rare token poorly, its pieces well. The new output layer starts
        fresh; returns the number of tokens kept.
        """
        vocab = TokenVocab(tokenizer)
        counts = Counter(i for text in texts for i in vocab.llm_ids(text))
        keep = {i for i, n in counts.items() if n >= self.config.vocab_min_count}
        for char in string.ascii_letters + string.digits + string.punctuation:
            keep.update(vocab.llm_ids(char))
            keep.update(tokenizer.encode(" " + char, add_special_tokens=False))
        ids = torch.tensor(sorted(keep), device=self.token_ids.device)
        self.config = replace(self.config, vocab_size=len(ids) + 1)
        old = self.ctc.out[-1] if isinstance(self.ctc.out, nn.Sequential) else self.ctc.out
        new = nn.Linear(old.in_features, len(ids) + 1, device=old.weight.device)
        if isinstance(self.ctc.out, nn.Sequential):
            self.ctc.out[-1] = new
        else:
            self.ctc.out = new
        self.token_ids = ids
        return len(ids)

    def unit_embeddings(self, posteriors: Tensor) -> Tensor:
        """[..., V] unit posteriors (blank first) → [..., D_llm] mixes of the top-k token embeddings."""
        if self.embeddings is None:
            raise RuntimeError("ctc-posterior: attach_llm(llm.get_input_embeddings()) before use")
        probs, ids = posteriors[..., BLANK + 1:].topk(self.config.top_k, dim=-1)
        probs = probs / probs.sum(-1, keepdim=True).clamp(min=1e-9)
        table = self.embeddings(self.token_ids[ids])  # column j of the posteriors is CTC id j + 1
        return (probs[..., None].to(table.dtype) * table).sum(-2)

    def _frames(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and (self.config.time_mask or self.config.channel_mask):
            hidden = spec_augment(hidden, mask, self.config.time_mask, self.config.channel_mask)
        return downsample(hidden, mask, self.config.stride)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        hidden, mask = self._frames(hidden, mask)
        _, logits = self.ctc(hidden, mask)
        loss = ctc_loss(logits, mask, ctc_targets, ctc_lengths)
        seg, counts = ctc_segments(logits.detach(), mask)
        out_mask = lengths_to_mask(counts, max(int(counts.max()), 1))
        posteriors = (logits / self.config.temperature).softmax(-1)
        units = pool_segments(posteriors, seg, counts)
        out = self.unit_embeddings(units) * out_mask[..., None]
        tokens = self.token_ids[units[..., BLANK + 1:].argmax(-1)]  # the CTC hypothesis, as LLM tokens
        return AdapterOutput(out, out_mask, loss, tokens)

    def ctc_only_loss(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor,
                      ctc_lengths: Tensor) -> Tensor | None:
        hidden, mask = self._frames(hidden, mask)
        return ctc_loss(self.ctc(hidden, mask)[1], mask, ctc_targets, ctc_lengths)

    @torch.no_grad()
    def frame_log_probs(self, hidden: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """CTC log-probabilities per (downsampled) frame [B, T, V] (blank = 0, ``blank_penalty``
        applied) and the frame mask [B, T]: what the transcript is decoded from."""
        hidden, mask = downsample(hidden, mask, self.config.stride)
        _, logits = self.ctc(hidden, mask)
        if self.config.blank_penalty:
            logits = logits - self.config.blank_penalty * F.one_hot(torch.tensor(BLANK), logits.shape[-1])
        return logits.log_softmax(-1), mask

    @torch.no_grad()
    def greedy_units(self, hidden: Tensor, mask: Tensor) -> list[list[int]]:
        """The greedy CTC path's units (CTC ids, blank = 0) per item: the adapter's own transcript."""
        log_probs, mask = self.frame_log_probs(hidden, mask)
        seg, counts = ctc_segments(log_probs, mask)
        labels = log_probs.argmax(-1)
        units = []
        for b in range(len(counts)):
            keep = seg[b] >= 0
            first = torch.ones_like(keep)
            first[1:] = seg[b][1:] != seg[b][:-1]
            units.append([int(t) for t in labels[b][keep & first] if int(t) != BLANK])
        return units
