"""The engine for Llama-family models (llama, mistral, qwen2: one module layout): a preallocated KV
cache and a lean forward pass over the model's own modules (norms, MLPs, ``QuantLinear``
projections, LoRA layers when peft wrapped them), with its own attention.

:class:`StaticEngine` holds what does not change between replies (the layers, the rotary table,
fused projections); :class:`StaticState` is one batch's cache, prefilled from spliced
``inputs_embeds`` (left-padded rows: an attention mask and per-row positions) and advanced by
:meth:`~StaticState.step` (one token per row) or :meth:`~StaticState.extend` (several tokens of one
row, all their logits: what speculative decoding verifies), with :meth:`~StaticState.rollback` to
drop rejected tokens. The cache grows (doubles) only when a reply outruns it.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.generation.fused import fused_projections
from speechllm.quant.backends import ROW_EXACT_UP_TO


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def base_model(llm: nn.Module) -> nn.Module:
    """The causal LM under a peft wrapper (its LoRA layers stay in place), or ``llm`` itself."""
    return llm.get_base_model() if hasattr(llm, "get_base_model") else llm


class StaticEngine:
    """Per-model parts of the static-cache decoder (built once per model, see :func:`engine_for`)."""

    def __init__(self, llm: nn.Module):
        model = base_model(llm)
        cfg = model.config
        self.model, self.layers = model, model.model.layers
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        p = next(iter(model.model.norm.parameters()))
        self.device, self.dtype = p.device, p.dtype
        self.cos = self.sin = torch.empty(0, self.head_dim, device=self.device, dtype=self.dtype)
        self.projections = [fused_projections(layer) for layer in self.layers]

    def current(self) -> bool:
        """False once the model changed under the engine (modules replaced, moved to a device)."""
        p = next(iter(self.model.model.norm.parameters()))
        return (p.device == self.device and p.dtype == self.dtype
                and len(self.layers) == len(self.projections)
                and all(f.current(layer) for f, layer in zip(self.projections, self.layers, strict=True)))

    def rope(self, n: int) -> None:
        """Make the rotary tables cover positions ``[0, n)``."""
        if n <= len(self.cos):
            return
        n = max(n, 2 * len(self.cos), 256)
        positions = torch.arange(n, device=self.device)[None]
        dummy = torch.zeros(1, device=self.device, dtype=self.dtype)
        cos, sin = self.model.model.rotary_emb(dummy, positions)  # every rope scaling type
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)

    def _attention(self, state: StaticState, i: int, h: Tensor, cos: Tensor, sin: Tensor, start: int,
                   mask: Tensor | None) -> Tensor:
        b, t, _ = h.shape
        q, k, v = self.projections[i].qkv(h)
        q = q.view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        end = start + t
        state.k[i, :, :, start:end] = k
        state.v[i, :, :, start:end] = v
        if 1 < t <= ROW_EXACT_UP_TO and not state.padded:  # a verify pass: each position as a step sees it
            out = torch.cat([F.scaled_dot_product_attention(
                q[:, :, j:j + 1], state.k[i, :, :, :start + j + 1], state.v[i, :, :, :start + j + 1],
                enable_gqa=True) for j in range(t)], dim=2)
        else:
            out = F.scaled_dot_product_attention(q, state.k[i, :, :, :end], state.v[i, :, :, :end],
                                                 attn_mask=mask, enable_gqa=True)
        return self.projections[i].out(out.transpose(1, 2).reshape(b, t, -1))

    @torch.no_grad()
    def forward(self, state: StaticState, h: Tensor, positions: Tensor, all_logits: bool = False,
                keys: Tensor | None = None) -> Tensor:
        """Feed embeddings ``h`` [rows, T, D] at per-row ``positions`` [rows, T] after the cache's
        columns; the logits of the last position [rows, V] (of every position with ``all_logits``).
        ``keys`` [rows, T] marks the new columns other positions may attend to (default: all)."""
        t = h.shape[1]
        start = state.length
        state.reserve(start + t)
        self.rope(int(positions.max()) + 1)
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]  # [rows, 1, T, dim]
        state.valid[:, start:start + t] = True if keys is None else keys
        mask = None
        if t > 1 or state.padded:  # keys: valid columns, causal within the new block
            mask = state.valid[:, None, None, :start + t].expand(-1, 1, t, -1).clone()
            mask[..., start:] &= torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
            mask[..., start:] |= torch.eye(t, dtype=torch.bool, device=h.device)  # padding rows: themselves
        h = h.to(self.dtype)
        for i, layer in enumerate(self.layers):
            h = h + self._attention(state, i, layer.input_layernorm(h), cos, sin, start, mask)
            h = h + self.projections[i].mlp(layer.post_attention_layernorm(h))
        state.length = start + t
        h = h if all_logits else h[:, -1]
        return self.model.lm_head(self.model.model.norm(h)).float()


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def engine_for(llm: nn.Module) -> StaticEngine:
    """The model's engine, built on first use and kept while the model lives."""
    model = base_model(llm)
    engine = _ENGINES.get(model)
    if engine is None or not engine.current():
        engine = _ENGINES[model] = StaticEngine(model)
    return engine


class StaticState:
    """One batch's preallocated cache ``[layers, rows, kv_heads, capacity, head_dim]``, its valid
    columns, each row's next position and the next-token logits ``[rows, V]``."""

    row_exact = True  # extend() of up to ROW_EXACT_UP_TO tokens scores each as step() would (bit for bit)

    def __init__(self, llm: nn.Module, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                 capacity: int = 0):
        self.engine = e = engine_for(llm)
        rows, length = attention_mask.shape
        capacity = max(capacity, length + 1)
        shape = (len(e.layers), rows, e.kv_heads, capacity, e.head_dim)
        self.k = torch.zeros(shape, device=e.device, dtype=e.dtype)
        self.v = torch.zeros(shape, device=e.device, dtype=e.dtype)
        self.valid = torch.zeros(rows, capacity, dtype=torch.bool, device=e.device)
        self.padded = not bool(attention_mask.bool().all())
        self.length = 0
        self.logits = e.forward(self, embeds, position_ids, keys=attention_mask.bool())
        self.next_position = position_ids[:, -1] + 1

    @property
    def rows(self) -> int:
        return self.k.shape[1]

    def reserve(self, n: int) -> None:
        """Room for ``n`` columns (the cache doubles when a reply outruns it)."""
        capacity = self.k.shape[3]
        if n <= capacity:
            return
        grow = max(n, 2 * capacity) - capacity
        self.k = F.pad(self.k, (0, 0, 0, grow))
        self.v = F.pad(self.v, (0, 0, 0, grow))
        self.valid = F.pad(self.valid, (0, grow))

    def _embed(self, tokens: Tensor) -> Tensor:
        return self.engine.model.model.embed_tokens(tokens.to(self.engine.device))

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row; returns the next logits [rows, V]."""
        self.logits = self.engine.forward(self, self._embed(tokens[:, None]), self.next_position[:, None])
        self.next_position = self.next_position + 1
        return self.logits

    def extend(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens`` [rows, T]; the logits after each of them [rows, T, V]."""
        t = tokens.shape[1]
        positions = self.next_position[:, None] + torch.arange(t, device=self.next_position.device)
        logits = self.engine.forward(self, self._embed(tokens), positions, all_logits=True)
        self.next_position = self.next_position + t
        self.logits = logits[:, -1]
        return logits

    def rollback(self, n: int, logits: Tensor) -> None:
        """Forget the last ``n`` tokens fed; ``logits`` [rows, V] are the next-token logits after that."""
        if n:
            self.length -= n
            self.next_position = self.next_position - n
        self.logits = logits

    def repeat(self, n: int) -> None:
        """Each row n times in a row (beam search start)."""
        self.select(torch.arange(self.rows, device=self.k.device).repeat_interleave(n))

    def select(self, rows: Tensor) -> None:
        """Keep / reorder / duplicate rows."""
        rows = rows.to(self.k.device)
        self.k, self.v, self.valid = self.k[:, rows], self.v[:, rows], self.valid[rows]
        self.next_position, self.logits = self.next_position[rows], self.logits[rows]
