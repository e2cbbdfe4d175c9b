"""The fallback engine: any Hugging Face causal LM fed ``inputs_embeds``, on its own KV cache object.

:class:`HFState` has the same methods as :class:`~speechllm.generation.static.StaticState`
(``step``, ``extend``, ``feed``, ``rollback``, ``select``, ``repeat``), so every strategy runs on both; the
registry in :mod:`speechllm.generation.engines` picks this one for architectures the static
engine does not cover.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from speechllm.hf_cache import cache_arg, output_cache


class HFState:
    """KV cache, attention mask and next position of each row of a batch."""

    # a k-token extend() does not give each row the numbers a step gives (other kernels, other
    # rounding), so speculative decoding stays off here: its replies would not be greedy's exactly
    row_exact = False

    @torch.no_grad()
    def __init__(self, llm: nn.Module, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                 capacity: int = 0):
        self.llm = llm
        self.mask = attention_mask
        self.next_position = position_ids[:, -1] + 1
        out = llm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                  use_cache=True, logits_to_keep=1)
        self.cache = output_cache(out)
        self.logits = out.logits[:, -1].float()  # [rows, vocab]

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    @torch.no_grad()
    def _forward(self, t: int, **inputs: Tensor) -> Tensor:
        """The model on ``t`` new positions per row (``input_ids`` or ``inputs_embeds``); their logits."""
        rows = self.mask.shape[0]
        self.mask = torch.cat([self.mask, self.mask.new_ones(rows, t)], dim=1)
        positions = self.next_position[:, None] + torch.arange(t, device=self.mask.device)
        out = self.llm(**inputs, attention_mask=self.mask, position_ids=positions, use_cache=True,
                       **cache_arg(self.cache))
        self.cache = output_cache(out)
        self.next_position = self.next_position + t
        logits = out.logits.float()
        self.logits = logits[:, -1]
        return logits

    def extend(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens`` [rows, T]; the logits after each of them [rows, T, V]."""
        return self._forward(tokens.shape[1], input_ids=tokens.to(self.mask.device))

    def feed(self, embeds: Tensor) -> Tensor:
        """Feed input embeddings [rows, T, D]; returns the next logits [rows, V]."""
        return self._forward(embeds.shape[1], inputs_embeds=embeds)[:, -1]

    def extend_lazily(self, tokens: Tensor) -> Callable[[int], Tensor]:
        """:meth:`extend`, its logits by position: ``logits(j)`` [rows, V]."""
        logits = self.extend(tokens)
        return lambda j: logits[:, j]

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row; returns the next logits [rows, vocab]."""
        return self.extend(tokens[:, None])[:, -1]

    def rollback(self, n: int, logits: Tensor) -> None:
        """Forget the last ``n`` tokens fed; ``logits`` [rows, V] are the next-token logits after that."""
        if n:
            self.mask = self.mask[:, :-n]
            self.cache.crop(-n)  # negative: drop that many (transformers 4.x and 5.x)
            self.next_position = self.next_position - n
        self.logits = logits

    def repeat(self, n: int) -> None:
        """Each row n times in a row (beam search start)."""
        self.cache.batch_repeat_interleave(n)
        self.mask = self.mask.repeat_interleave(n, dim=0)
        self.next_position = self.next_position.repeat_interleave(n, dim=0)
        self.logits = self.logits.repeat_interleave(n, dim=0)

    def select(self, rows: Tensor) -> None:
        """Keep / reorder / duplicate rows."""
        rows = rows.to(self.mask.device)
        self.cache.reorder_cache(rows)
        self.mask, self.next_position = self.mask[rows], self.next_position[rows]
        self.logits = self.logits[rows]
