"""The LLM as the language model of the CTC prefix beam search (``speechllm.speechlm.ctc_beam``):
next-token log-probabilities, over the tokens the CTC head can write, of many prefixes at once.

It runs the model's decoder (no output layer: only the CTC units' rows of it, dequantized once) on
a pool of Hugging Face KV-cache rows, one per prefix the search may still extend, so it works for
every architecture; the rows are grown, copied from a parent and dropped as the search goes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from speechllm.hf_cache import cache_arg, cache_tensors, make_cache, output_cache

Key = tuple[int, tuple[int, ...]]  # (item, prefix of CTC ids)


class LLMPrefixScorer:
    """The LLM's next-token log-probabilities, over the CTC units, of many prefixes at once.

    A pool of KV-cache rows holds one row per prefix the search may still extend.
    :meth:`update` runs the LLM only on the prefixes asked for, each from a copy of its parent's
    row plus its last token, and appends their rows to the pool; the kept rows get one masked
    column so all rows keep one length (cheap: no matrix products), and columns masked in every
    row are dropped from time to time.
    """

    @torch.no_grad()
    def __init__(self, llm: nn.Module, unit_tokens: Tensor, items: int, bos: int):
        self.decoder = llm.get_decoder()  # the transformer without its output layer
        device = next(llm.parameters()).device
        self.unit_tokens = unit_tokens.to(device)  # CTC id k (k >= 1) is LLM token unit_tokens[k - 1]
        # the output layer's rows for the units only: the CTC can write no other token, so the
        # LM is normalised over them (and a 49k-row product per step is most of a small LLM's cost)
        self.head = _output_rows(llm.get_output_embeddings(), self.unit_tokens)
        ids = torch.full((items, 1), bos, device=device)
        self.mask = torch.ones_like(ids)
        self.next_position = torch.ones(items, dtype=torch.long, device=device)
        out = self.decoder(input_ids=ids, attention_mask=self.mask, position_ids=torch.zeros_like(ids),
                           use_cache=True)
        self.kv = cache_tensors(output_cache(out))
        self.rows: dict[Key, int] = {(item, ()): item for item in range(items)}
        self.logprobs: dict[Key, Tensor] = {}
        self._store(list(self.rows), out.last_hidden_state[:, -1])

    def _store(self, keys: Sequence[Key], hidden: Tensor) -> None:
        scores = (hidden @ self.head.T).float().log_softmax(-1).cpu()
        for key, row in zip(keys, scores, strict=True):
            self.logprobs[key] = row

    @torch.no_grad()
    def update(self, need: Sequence[Key], keep: Sequence[Key]) -> None:
        """Compute the prefixes ``need`` (each from its parent's row) in one batched step; the
        pool then holds their rows and those of ``keep`` (prefixes still to be extended, or
        parents of prefixes not computed yet)."""
        new = [k for k in dict.fromkeys(need) if k not in self.rows]
        if not new:
            return
        kept_keys = [k for k in dict.fromkeys(keep) if k in self.rows]
        kept = torch.tensor([self.rows[k] for k in kept_keys], dtype=torch.long)
        parents = torch.tensor([self.rows[(k[0], k[1][:-1])] for k in new], dtype=torch.long)
        tokens = self.unit_tokens[torch.tensor([k[1][-1] - 1 for k in new], device=self.mask.device)]
        mask = torch.cat([self.mask[parents], self.mask.new_ones(len(new), 1)], dim=1)
        out = self.decoder(input_ids=tokens[:, None], attention_mask=mask,
                           position_ids=self.next_position[parents, None],
                           **cache_arg(make_cache([(k[parents], v[parents]) for k, v in self.kv])),
                           use_cache=True)
        grown = cache_tensors(output_cache(out))
        self.kv = [(torch.cat([_pad_column(k[kept]), k2]), torch.cat([_pad_column(v[kept]), v2]))
                   for (k, v), (k2, v2) in zip(self.kv, grown, strict=True)]
        self.mask = torch.cat([_pad_column(self.mask[kept]), mask])
        self.next_position = torch.cat([self.next_position[kept], self.next_position[parents] + 1])
        self._drop_dead_columns()
        self.rows = {k: i for i, k in enumerate(kept_keys + new)}
        self.logprobs = {k: self.logprobs[k] for k in kept_keys}
        self._store(new, out.last_hidden_state[:, -1])

    def _drop_dead_columns(self) -> None:
        """Positions masked in every row (their prefixes died) only cost copies: drop them once a
        quarter of the cache is dead. Positions are explicit, so nothing else moves."""
        alive = self.mask.bool().any(0)
        if int(alive.sum()) < 0.75 * len(alive):
            self.mask = self.mask[:, alive]
            self.kv = [(k[:, :, alive], v[:, :, alive]) for k, v in self.kv]


def _output_rows(head: nn.Module, tokens: Tensor) -> Tensor:
    """Rows of the LLM's output layer, float, from an ``nn.Linear`` or a low-bit ``QuantLinear``
    (a speech-LLM whose config sets ``quant``), dequantizing only the rows asked for."""
    if hasattr(head, "qweight"):
        return head.qweight.rows(tokens).dequantize()
    return head.weight[tokens]


def _pad_column(x: Tensor) -> Tensor:
    """One zero (masked) position appended on the sequence axis: [rows, L] or [rows, heads, L, dim]."""
    return torch.nn.functional.pad(x, (0, 1) if x.dim() == 2 else (0, 0, 0, 1))
