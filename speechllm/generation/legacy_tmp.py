"""Fast decoding for the LLM backbone: a static KV cache and a lean forward pass, shared by greedy,
sampling and beam search.

``LlamaRunner`` runs a Hugging Face Llama-family model (llama, mistral, qwen2: same module layout) with
its own modules (norms, MLPs, ``QuantLinear`` projections) but its own attention over a preallocated
cache, which removes most of ``generate``'s per-token Python overhead. Other architectures fall back to
``model.generate``. The strategies are small classes, as in whisper's ``decoding.py``: a ``TokenChooser``
(greedy or sampling, with logit filters) and ``beam_search`` on top of the same runner.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

RUNNABLE = ("llama", "mistral", "qwen2")


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0
    top_p: float = 1.0
    beam_size: int = 1
    length_penalty: float = 1.0
    eos_token_id: int | tuple[int, ...] | None = None  # default: the model config's
    seed: int | None = None


@dataclass(frozen=True)
class GenerationResult:
    tokens: list[int]  # new tokens only (without the stopping token)
    finished: bool  # stopped on an end token (not on max_new_tokens)
    prefill_s: float
    decode_s: float
    score: float = 0.0  # beam search: length-normalised log probability
    alternatives: list[list[int]] = field(default_factory=list)  # beam search: the other finished beams

    @property
    def tokens_per_s(self) -> float:
        return max(len(self.tokens) - 1, 0) / self.decode_s if self.decode_s > 0 else 0.0


# --- the runner -----------------------------------------------------------------------------------

def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class LlamaRunner:
    """Forward passes over a static KV cache for a Hugging Face Llama-family causal LM."""

    def __init__(self, model: nn.Module, max_len: int, batch: int = 1):
        cfg = model.config
        self.model, self.layers = model, model.model.layers
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.max_len = max_len
        p = next(iter(model.model.norm.parameters()))
        self.device, self.dtype = p.device, p.dtype
        shape = (len(self.layers), batch, self.kv_heads, max_len, self.head_dim)
        self.k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        positions = torch.arange(max_len, device=self.device)[None]
        dummy = torch.zeros(1, device=self.device, dtype=self.dtype)
        cos, sin = model.model.rotary_emb(dummy, positions)  # handles every rope scaling type
        self.cos, self.sin = cos[0], sin[0]  # [max_len, head_dim]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep cache rows ``index`` (beam search), growing or shrinking the batch."""
        self.k, self.v = self.k[:, index], self.v[:, index]

    def _attention(self, i: int, attn: nn.Module, h: torch.Tensor, pos: int) -> torch.Tensor:
        b, t, _ = h.shape
        q = attn.q_proj(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attn.v_proj(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.cos[pos:pos + t], self.sin[pos:pos + t]
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        self.k[i, :, :, pos:pos + t] = k
        self.v[i, :, :, pos:pos + t] = v
        keys, values = self.k[i, :, :, :pos + t], self.v[i, :, :, :pos + t]
        mask = None
        if t > 1:  # causal over the new block, everything before it visible
            mask = torch.ones(t, pos + t, dtype=torch.bool, device=h.device).tril(pos)
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
        return attn.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: int) -> torch.Tensor:
        """Last-position logits ``[batch, vocab]`` after feeding ``ids`` ``[batch, T]`` at ``pos``."""
        if pos + ids.shape[1] > self.max_len:
            raise ValueError(f"sequence longer than the cache ({self.max_len} tokens)")
        h = self.model.model.embed_tokens(ids).to(self.dtype)
        for i, layer in enumerate(self.layers):
            h = h + self._attention(i, layer.self_attn, layer.input_layernorm(h), pos)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        return self.model.lm_head(self.model.model.norm(h[:, -1])).float()


# --- choosing tokens ------------------------------------------------------------------------------

class TokenChooser:
    """Greedy when ``temperature == 0``; otherwise sampling after temperature, top-k and top-p filters."""

    def __init__(self, options: GenerationOptions, device: torch.device):
        self.options = options
        self.generator = None
        if options.seed is not None:
            self.generator = torch.Generator(device=device).manual_seed(options.seed)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        o = self.options
        if o.temperature <= 0:
            return logits.argmax(-1)
        logits = logits / o.temperature
        if o.top_k > 0:
            kth = logits.topk(min(o.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if o.top_p < 1.0:
            sorted_logits, order = logits.sort(-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            drop = cum - sorted_logits.softmax(-1) > o.top_p  # keep the smallest prefix reaching top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return torch.multinomial(logits.softmax(-1), 1, generator=self.generator)[..., 0]


def _eos_set(model: nn.Module, options: GenerationOptions) -> set[int]:
    eos = options.eos_token_id if options.eos_token_id is not None else model.config.eos_token_id
    return set() if eos is None else {eos} if isinstance(eos, int) else set(eos)


def _greedy_or_sample(runner: LlamaRunner, ids: torch.Tensor, options: GenerationOptions, eos: set[int]
                      ) -> GenerationResult:
    choose = TokenChooser(options, runner.device)
    t0 = time.perf_counter()
    logits = runner.forward(ids, 0)
    t1 = time.perf_counter()
    tokens, pos, finished = [], ids.shape[1], False
    for _ in range(options.max_new_tokens):
        token = int(choose(logits)[0])
        if token in eos:
            finished = True
            break
        tokens.append(token)
        if len(tokens) == options.max_new_tokens:
            break
        logits = runner.forward(torch.tensor([[token]], device=runner.device), pos)
        pos += 1
    return GenerationResult(tokens, finished, t1 - t0, time.perf_counter() - t1)


def _beam_search(runner: LlamaRunner, ids: torch.Tensor, options: GenerationOptions, eos: set[int]
                 ) -> GenerationResult:
    width = options.beam_size
    t0 = time.perf_counter()
    logprobs = runner.forward(ids, 0).log_softmax(-1)  # [1, V]
    t1 = time.perf_counter()
    beams: list[list[int]] = [[]]
    scores = torch.zeros(1, device=runner.device)
    done: list[tuple[float, list[int]]] = []
    pos = ids.shape[1]
    for step in range(options.max_new_tokens):
        total = (scores[:, None] + logprobs).flatten()
        top = total.topk(2 * width)
        new_beams, new_scores, rows = [], [], []
        vocab = logprobs.shape[-1]
        for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            row, token = divmod(flat, vocab)
            if token in eos or step == options.max_new_tokens - 1:
                seq = beams[row] + ([] if token in eos else [token])
                done.append((score / max(len(seq), 1) ** options.length_penalty, seq))
            else:
                new_beams.append(beams[row] + [token])
                new_scores.append(score)
                rows.append(row)
            if len(new_beams) == width:
                break
        best_open = max(new_scores, default=float("-inf")) / max(step + 1, 1) ** options.length_penalty
        if len(done) >= width and max(s for s, _ in done) >= best_open or not new_beams:
            break
        beams, scores = new_beams, torch.tensor(new_scores, device=runner.device)
        runner.reorder(torch.tensor(rows, device=runner.device))
        last = torch.tensor([[b[-1]] for b in beams], device=runner.device)
        logprobs = runner.forward(last, pos).log_softmax(-1)
        pos += 1
    done.sort(key=lambda d: d[0], reverse=True)
    best_score, best = done[0] if done else (0.0, beams[0])
    finished = bool(done)
    return GenerationResult(best, finished, t1 - t0, time.perf_counter() - t1, best_score,
                            [seq for _, seq in done[1:width]])


def generate(model: nn.Module, input_ids: torch.Tensor, options: GenerationOptions | None = None,
             runner: LlamaRunner | None = None) -> GenerationResult:
    """Continue one prompt (``input_ids`` ``[1, T]``) with greedy, sampling or beam search."""
    options = options or GenerationOptions()
    eos = _eos_set(model, options)
    input_ids = input_ids.reshape(1, -1)
    if getattr(model.config, "model_type", None) not in RUNNABLE:
        return _hf_generate(model, input_ids, options, eos)
    need = input_ids.shape[1] + options.max_new_tokens
    if runner is None or runner.max_len < need:
        runner = LlamaRunner(model, need, batch=1)
    elif runner.k.shape[1] != 1:
        runner.reorder(torch.zeros(1, dtype=torch.long, device=runner.device))
    input_ids = input_ids.to(runner.device)
    if options.beam_size > 1:
        return _beam_search(runner, input_ids, options, eos)
    return _greedy_or_sample(runner, input_ids, options, eos)


def _hf_generate(model: nn.Module, ids: torch.Tensor, options: GenerationOptions, eos: set[int]
                 ) -> GenerationResult:
    t0 = time.perf_counter()
    sample = options.temperature > 0
    out = model.generate(ids, max_new_tokens=options.max_new_tokens, do_sample=sample,
                         num_beams=options.beam_size, eos_token_id=sorted(eos) or None,
                         **({"temperature": options.temperature, "top_k": options.top_k or None,
                             "top_p": options.top_p} if sample else {}))
    new = out[0, ids.shape[1]:].tolist()
    finished = bool(new) and new[-1] in eos
    tokens = new[:-1] if finished else new
    return GenerationResult(tokens, finished, 0.0, time.perf_counter() - t0)
