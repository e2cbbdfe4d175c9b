"""``alignformer``: the CTC alignment cuts the utterance into dynamic windows for a Q-Former.

AlignFormer (Fan et al., 2024) matches the speech length to the text length: a CTC head (as in
``ctc``) emits one unit per non-blank segment of its greedy path; each unit gets a window of
frames and ``queries_per_window`` learned queries that read only that window. Windows tile the
utterance: unit i's window runs from halfway between the previous segment and its own to
halfway between its own and the next one (the first starts at frame 0, the last ends at the
item's length), cut to at most ``max_window`` frames around the segment's centre. Blank frames
thus still reach the LLM through the window of a neighbouring unit, unlike blank filtering.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from speechllm.adapters.base import Adapter, AdapterOutput, lengths_to_mask
from speechllm.adapters.ctc import CHARS, CTCHead, ctc_loss, ctc_segments
from speechllm.adapters.qformer import QFormer


@dataclass(frozen=True)
class AlignFormerConfig:
    encoder_dim: int
    llm_dim: int
    vocab: str = "chars"  # a CTC_VOCABS name (see ctc.py)
    vocab_size: int = len(CHARS) + 1
    n_ctc_layers: int = 2
    n_heads: int = 4
    d_ffn: int = 1024
    queries_per_window: int = 1
    max_window: int = 32  # frames (Whisper: 20 ms each)
    d_model: int = 256
    n_layers: int = 2  # Q-Former layers


def unit_windows(seg: Tensor, counts: Tensor, mask: Tensor, max_window: int) -> tuple[Tensor, Tensor]:
    """[lo, hi) frame range of each unit's window, both [B, N] (N = max count; zero past count)."""
    batch, frames = seg.shape
    n = max(int(counts.max()), 1)
    t = torch.arange(frames, device=seg.device).expand(batch, -1)
    index = torch.where(seg >= 0, seg, n)
    first = torch.full((batch, n + 1), frames, device=seg.device).scatter_reduce(1, index, t, "amin")[:, :n]
    last = torch.full((batch, n + 1), -1, device=seg.device).scatter_reduce(1, index, t, "amax")[:, :n]
    valid = lengths_to_mask(counts, n)
    lengths = mask.sum(1, keepdim=True)
    # boundary k lies between segment k-1 and segment k; the item's ends close the first and last
    inner = (last[:, :-1] + 1 + first[:, 1:]) // 2
    bounds = torch.cat([torch.zeros_like(lengths), inner, lengths.expand(-1, 1)], dim=1)
    upper = torch.where(lengths_to_mask(counts - 1, n), bounds[:, 1:], lengths)
    centre = (first + last) // 2
    lo = torch.maximum(bounds[:, :-1], centre - max_window // 2)
    hi = torch.minimum(upper, lo + max_window)
    return lo * valid, hi * valid


class AlignFormerAdapter(Adapter):
    Config = AlignFormerConfig

    def __init__(self, config: AlignFormerConfig):
        super().__init__(config)
        c = config
        self.ctc = CTCHead(c.encoder_dim, c.vocab_size, c.n_ctc_layers, c.n_heads, c.d_ffn)
        self.position = nn.Parameter(torch.zeros(c.max_window, c.encoder_dim))
        self.qformer = QFormer(c.queries_per_window, c.encoder_dim, c.d_model, c.n_heads, c.n_layers, c.d_ffn)
        self.proj = nn.Linear(c.d_model, c.llm_dim)

    def forward(self, hidden: Tensor, mask: Tensor, ctc_targets: Tensor | None = None,
                ctc_lengths: Tensor | None = None) -> AdapterOutput:
        q, dim = self.config.queries_per_window, hidden.shape[-1]
        x, logits = self.ctc(hidden, mask)
        seg, counts = ctc_segments(logits.detach(), mask)
        lo, hi = unit_windows(seg, counts, mask, self.config.max_window)
        width = max(int((hi - lo).max()), 1)
        frame = lo[..., None] + torch.arange(width, device=x.device)  # [B, N, W]
        frame_mask = frame < hi[..., None]
        frame = frame.clamp(max=x.shape[1] - 1)
        windows = torch.gather(x[:, None].expand(-1, frame.shape[1], -1, -1), 2,
                               frame[..., None].expand(-1, -1, -1, dim))  # [B, N, W, D]
        windows = windows + self.position[:width]
        used = lengths_to_mask(counts, frame.shape[1])
        out = x.new_zeros(*used.shape, q, self.config.llm_dim)
        out[used] = self.proj(self.qformer(windows[used], frame_mask[used]))
        out_mask = used.repeat_interleave(q, dim=1)
        aux = ctc_loss(logits, mask, ctc_targets, ctc_lengths)
        return AdapterOutput(out.flatten(1, 2), out_mask, aux)

