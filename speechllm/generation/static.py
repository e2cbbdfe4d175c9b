"""The engine for Llama-family models (llama, mistral, qwen2: one module layout) and Gemma 3 (the same
projections, with q/k norms, norms after the attention and the MLP as well as before, a GELU gate, and
sliding and global layers with a rotary base each): a preallocated KV cache and a lean forward pass over
the model's own modules (norms, MLPs, ``QuantLinear`` projections, LoRA layers when peft wrapped them),
with its own attention. A sliding layer (Gemma 3's, every layer of a Mistral with ``sliding_window``)
attends to the last ``sliding_window`` columns, as transformers' sliding-window mask has it; the cache
keeps every column.

:class:`StaticEngine` holds what does not change between replies (the layers, the rotary tables,
fused projections); :class:`StaticState` is one batch's cache, prefilled from spliced
``inputs_embeds`` (left-padded rows: an attention mask and per-row positions) and advanced by
:meth:`~StaticState.step` (one token per row), :meth:`~StaticState.feed` (input embeddings) or
:meth:`~StaticState.extend` (several tokens of one row, all their logits: what speculative decoding
verifies), with :meth:`~StaticState.rollback` to drop rejected tokens. The cache grows (doubles) only
when a reply outruns it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from speechllm.generation.attention import native_attention, rope_attend
from speechllm.generation.fused import direct, fused_projections
from speechllm.generation.rowwise import native_rms_norm
from speechllm.quant.backends import ROW_EXACT_UP_TO

# the norms of the Llama family (``w * x / rms(x)`` in float32) and Gemma's (``(1 + w) * x / rms(x)``):
# one native call (rowwise.c), else ``F.rms_norm`` (one op for the module's seven; on the CPU it runs as six)
_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")
_RMS_NORMS_PLUS_ONE = ("Gemma3RMSNorm",)


def _norm(norm: nn.Module):
    """``norm`` as a function of the hidden states: the family's RMSNorm natively or as ``F.rms_norm``,
    any other norm as the module itself. (Gemma's ``1 + w`` is taken when the engine is built.)"""
    kind = type(norm).__name__
    if kind not in _RMS_NORMS + _RMS_NORMS_PLUS_ONE or norm.weight.dtype != torch.float32:
        return norm
    if kind in _RMS_NORMS_PLUS_ONE:
        weight, eps = 1.0 + norm.weight.detach(), norm.eps
    else:
        weight, eps = norm.weight, norm.variance_epsilon
    shape = (weight.shape[0],)
    return native_rms_norm(weight, eps) or (lambda h: F.rms_norm(h, shape, weight, eps))


# a decoder layer's norms: (before the attention, before the MLP, after the attention, after the MLP);
# Llama's ``post_attention_layernorm`` is the one before its MLP, Gemma's the one after its attention
_LAYER_NORMS = {"gemma3_text": ("input_layernorm", "pre_feedforward_layernorm", "post_attention_layernorm",
                                "post_feedforward_layernorm")}
_LLAMA_NORMS = ("input_layernorm", "post_attention_layernorm")


def _layer_norms(model: nn.Module, layer: nn.Module) -> list[nn.Module]:
    return [getattr(layer, name) for name in _LAYER_NORMS.get(model.config.model_type, _LLAMA_NORMS)]


def _held(model: nn.Module) -> list[nn.Module]:
    """The modules the engine calls through its own functions besides the projections: the norms, the head."""
    norms = []
    for layer in model.model.layers:
        norms += _layer_norms(model, layer)
        attn = layer.self_attn
        norms += [m for m in (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)) if m is not None]
    return [model.model.norm, model.lm_head, *norms]


def layer_windows(config, layers: int) -> list[int]:
    """Each layer's sliding window: the columns a position sees, itself included (0: all earlier ones).
    Layers typed ``sliding_attention`` have the config's window (Gemma 3), or every layer where the config
    sets a window and no layer types (Mistral)."""
    window = getattr(config, "sliding_window", None) or 0
    kinds = getattr(config, "layer_types", None)
    if not kinds:
        return [window] * layers
    return [window if kind == "sliding_attention" else 0 for kind in kinds]


def _within(mask: Tensor | None, start: int, window: int) -> Tensor | None:
    """``mask`` [rows, 1, t, columns] of new columns ``start...`` limited to a sliding window: column c
    sees columns (c - window, c] (``window`` 0: unchanged)."""
    if mask is None or not window:
        return mask
    columns = torch.arange(mask.shape[-1], device=mask.device)
    return mask & (columns[start:, None] - columns[None, :] < window)


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
        # the rotary table of each layer's type, where the rotary has one per type (Gemma 3); else one
        per_type = getattr(model.model.rotary_emb, "layer_types", None) is not None
        self.layer_types = list(cfg.layer_types) if per_type else [None] * len(self.layers)
        empty = torch.empty(0, self.head_dim, device=self.device, dtype=self.dtype)
        self.tables = {kind: (empty, empty) for kind in self.layer_types}
        self.windows = layer_windows(cfg, len(self.layers))
        self.native = native_attention(self.dtype, self.device, self.heads, self.kv_heads, self.head_dim)
        self.projections = [fused_projections(layer) for layer in self.layers]
        # per layer: the norms before the attention and the MLP, and (Gemma) after them
        self.norms = [[_norm(m) for m in _layer_norms(model, layer)] for layer in self.layers]
        self.qk_norms = [(_norm(layer.self_attn.q_norm), _norm(layer.self_attn.k_norm))
                         if hasattr(layer.self_attn, "q_norm") else None for layer in self.layers]
        scalar = getattr(cfg, "query_pre_attn_scalar", None)
        self.scale = None if scalar is None else scalar ** -0.5  # None: 1 / sqrt(head_dim)
        self.softcap = getattr(cfg, "final_logit_softcapping", None)
        self.held = _held(model)
        self.final_norm, self.head = _norm(model.model.norm), direct(model.lm_head)

    def current(self) -> bool:
        """False once the model changed under the engine (modules replaced, moved to a device)."""
        p = next(iter(self.model.model.norm.parameters()))
        held = _held(self.model)
        return (p.device == self.device and p.dtype == self.dtype
                and len(held) == len(self.held) and all(a is b for a, b in zip(held, self.held, strict=True))
                and len(self.layers) == len(self.projections)
                and all(f.current(layer) for f, layer in zip(self.projections, self.layers, strict=True)))

    def rope(self, n: int) -> None:
        """Make the rotary tables cover positions ``[0, n)``."""
        have = len(next(iter(self.tables.values()))[0])
        if n <= have:
            return
        n = max(n, 2 * have, 256)
        positions = torch.arange(n, device=self.device)[None]
        dummy = torch.zeros(1, device=self.device, dtype=self.dtype)
        half, rotary = self.head_dim // 2, self.model.model.rotary_emb
        for kind in self.tables:
            cos, sin = rotary(dummy, positions) if kind is None else rotary(dummy, positions, kind)
            # x * cos + rotate_half(x) * sin, with rotate_half(x) = (-x2, x1) = roll(x) * (-1, 1): the sign
            # goes into the table (the same numbers: a sign flip is exact)
            sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
            self.tables[kind] = cos[0].to(self.dtype), sin[0].to(self.dtype)

    def _attention(self, state: StaticState, i: int, h: Tensor, cos: Tensor, sin: Tensor, start: int,
                   mask: Tensor | None) -> Tensor:
        b, t, _ = h.shape
        qk, v = self.projections[i].qk_v(h)  # q and k side by side: one rotary pass for both
        if self.qk_norms[i] is not None:  # Gemma: each head's q and k normed before the rotary
            q_norm, k_norm = self.qk_norms[i]
            split, dim = self.heads * self.head_dim, self.head_dim
            qk = torch.cat([q_norm(qk[..., :split].unflatten(-1, (self.heads, dim))).flatten(-2),
                            k_norm(qk[..., split:].unflatten(-1, (self.kv_heads, dim))).flatten(-2)], -1)
        keys, values = state.k[i], state.v[i]
        window = self.windows[i]
        if mask is None and self.native:  # a step or a verify pass: rotary, cache and each position alone
            out = rope_attend(qk, v, cos, sin, keys, values, start, self.heads, self.scale, window)
            return self.projections[i].out(out)
        qk = qk.view(b, t, self.heads + self.kv_heads, self.head_dim)
        qk = qk * cos + qk.roll(self.head_dim // 2, -1) * sin
        end = start + t
        keys[:, :, start:end] = qk[:, :, self.heads:].transpose(1, 2)
        values[:, :, start:end] = v.view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q = qk[:, :, :self.heads].transpose(1, 2)
        if mask is None:  # a step or a verify pass: each position as a step sees it
            seen = [(max(0, start + j + 1 - window) if window else 0, start + j + 1) for j in range(t)]
            out = torch.cat([F.scaled_dot_product_attention(
                q[:, :, j:j + 1], keys[:, :, a:b], values[:, :, a:b], enable_gqa=True, scale=self.scale)
                for j, (a, b) in enumerate(seen)], dim=2)
        else:
            out = F.scaled_dot_product_attention(q, keys[:, :, :end], values[:, :, :end], attn_mask=mask,
                                                 enable_gqa=True, scale=self.scale)
        return self.projections[i].out(out.transpose(1, 2).reshape(b, t, -1))

    @torch.no_grad()
    def forward(self, state: StaticState, h: Tensor, positions: Tensor, all_logits: bool = False,
                keys: Tensor | None = None, head: bool = True) -> Tensor:
        """Feed embeddings ``h`` [rows, T, D] at per-row ``positions`` [rows, T] after the cache's
        columns; the logits of the last position [rows, V] (of every position with ``all_logits``).
        ``keys`` [rows, T] marks the new columns other positions may attend to (default: all).
        ``head=False``: the final hidden states [rows, T, D] instead (for :meth:`logits`). Either way
        ``state.hidden`` keeps the final hidden states the logits come from (a draft head reads them)."""
        t = h.shape[1]
        start = state.length
        state.reserve(start + t)
        self.rope(int(positions.max()) + 1)
        # each layer type's [rows, T, 1, dim] rotary factors at these positions
        rope = {kind: (cos[positions][:, :, None], sin[positions][:, :, None])
                for kind, (cos, sin) in self.tables.items()}
        state.valid[:, start:start + t] = True if keys is None else keys
        mask = None  # a step, or a verify pass (a few positions of unpadded rows: attention per position)
        if state.padded or t > ROW_EXACT_UP_TO:  # keys: valid columns, causal within the new block
            mask = state.valid[:, None, None, :start + t].expand(-1, 1, t, -1).clone()
            mask[..., start:] &= torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
            mask[..., start:] |= torch.eye(t, dtype=torch.bool, device=h.device)  # padding rows: themselves
        masks = {window: _within(mask, start, window) for window in set(self.windows)}
        h = h.to(self.dtype)
        for i, norms in enumerate(self.norms):
            cos, sin = rope[self.layer_types[i]]
            attended = self._attention(state, i, norms[0](h), cos, sin, start, masks[self.windows[i]])
            if len(norms) == 2:  # the Llama family: norms before the attention and the MLP
                h = h + attended
                h = h + self.projections[i].mlp(norms[1](h))
            else:  # Gemma: and after each
                h = h + norms[2](attended)
                h = h + norms[3](self.projections[i].mlp(norms[1](h)))
        state.length = start + t
        state.hidden = self.final_norm(h if all_logits or not head else h[:, -1:])
        if not head:
            return state.hidden
        return self.logits(state.hidden if all_logits else state.hidden[:, -1])

    def logits(self, hidden: Tensor) -> Tensor:
        """The output layer on final hidden states (with Gemma's soft cap where the model has one)."""
        logits = self.head(hidden).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def head_takes_rows_together(self) -> bool:
        """Whether the output layer scores a few rows for about the price of one (its kernel, once chosen)."""
        takes = getattr(self.model.lm_head, "takes_rows_together", None)
        return takes is not None and takes()


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
    columns, each row's next position, the next-token logits ``[rows, V]`` and the final hidden states
    they come from (``hidden[:, -1]``, [rows, D])."""

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

    def _positions(self, t: int) -> Tensor:
        """Each row's positions [rows, t] for ``t`` tokens after those fed so far."""
        return self.next_position[:, None] + torch.arange(t, device=self.next_position.device)

    def feed(self, embeds: Tensor) -> Tensor:
        """Feed input embeddings [rows, T, D] (inputs that are not the model's own token embeddings, as
        the TTS LM's speech tokens); returns the next logits [rows, V]."""
        t = embeds.shape[1]
        positions = self._positions(t)
        self.logits = self.engine.forward(self, embeds, positions)
        self.next_position = self.next_position + t
        return self.logits

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row; returns the next logits [rows, V]."""
        return self.feed(self._embed(tokens[:, None]))

    def extend(self, tokens: Tensor) -> Tensor:
        """Feed ``tokens`` [rows, T]; the logits after each of them [rows, T, V]."""
        t = tokens.shape[1]
        positions = self._positions(t)
        logits = self.engine.forward(self, self._embed(tokens), positions, all_logits=True)
        self.next_position = self.next_position + t
        self.logits = logits[:, -1]
        return logits

    def extend_lazily(self, tokens: Tensor) -> Callable[[int], Tensor]:
        """:meth:`extend` of one row, its logits scored on demand: ``logits(j)`` [1, V] after token ``j``
        (a verify pass stops at a draft's first miss; the output layer never scores the rows after it),
        or all rows at once where the output layer takes them for the price of one; either way each
        row gets a step's numbers."""
        t = tokens.shape[1]
        positions = self._positions(t)
        hidden = self.engine.forward(self, self._embed(tokens), positions, all_logits=True, head=False)
        self.next_position = self.next_position + t
        if self.engine.head_takes_rows_together():  # all rows in one call: the same numbers, no dearer
            scored = self.engine.logits(hidden)
            return lambda j: scored[:, j]
        return lambda j: self.engine.logits(hidden[:, j])

    def rollback(self, n: int, logits: Tensor) -> None:
        """Forget the last ``n`` tokens fed; ``logits`` [rows, V] are the next-token logits after that."""
        if n:
            self.length -= n
            self.next_position = self.next_position - n
            self.hidden = self.hidden[:, :self.hidden.shape[1] - n]
        self.logits = logits

    def repeat(self, n: int) -> None:
        """Each row n times in a row (beam search start)."""
        self.select(torch.arange(self.rows, device=self.k.device).repeat_interleave(n))

    def select(self, rows: Tensor) -> None:
        """Keep / reorder / duplicate rows."""
        rows = rows.to(self.k.device)
        self.k, self.v, self.valid = self.k[:, rows], self.v[:, rows], self.valid[rows]
        self.next_position, self.logits = self.next_position[rows], self.logits[rows]
        self.hidden = self.hidden[rows]
