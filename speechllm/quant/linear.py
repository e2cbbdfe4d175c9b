"""``QuantLinear`` and ``QuantEmbedding``: drop-in replacements for ``nn.Linear`` / ``nn.Embedding``.

The quantized weight lives in three buffers (``codes``, ``scale``, ``offset``), which is what
``state_dict`` and the safetensors files hold. The matmul goes through a backend from
:mod:`speechllm.quant.backends`, chosen per input-size bucket on first use (or forced by name);
a backend's re-packed copy of the weight is kept on the module, not saved. ``compact()`` then drops
the module's own codes when the kernel's copy can give them back, so a weight is held once.

Gradients flow to the input (never to the frozen codes), so LoRA adapters and other trainable
parts around a quantized layer train as usual.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .backends import BACKENDS, Backend, bucket, choose
from .formats import INT4, INT8, QuantizedWeight, QuantSpec, fake_quantize_activations, quantize_weight


def _code_shape(spec: QuantSpec, n: int, k: int) -> tuple[tuple[int, int], torch.dtype]:
    return ((n, k // 2), torch.uint8) if spec.bits == 4 else ((n, k), torch.int8)


class _QuantWeightHolder(nn.Module):
    """Buffers of one quantized matrix, shared by ``QuantLinear`` and ``QuantEmbedding``."""

    def _init_buffers(self, spec: QuantSpec, n: int, k: int, scale_dtype: torch.dtype,
                      device: torch.device | str | None) -> None:
        self.spec = spec
        shape, dtype = _code_shape(spec, n, k)
        groups = spec.n_groups(k)
        self.register_buffer("codes", torch.zeros(shape, dtype=dtype, device=device))
        self.register_buffer("scale", torch.ones(n, groups, dtype=scale_dtype, device=device))
        offset = torch.zeros(n, groups, dtype=scale_dtype, device=device) if spec.bits == 4 else None
        self.register_buffer("offset", offset)

    @property
    def qweight(self) -> QuantizedWeight:
        return QuantizedWeight(self.spec, self._codes(), self.scale, self.offset)

    def _codes(self) -> torch.Tensor:
        return self.codes

    def set_weight(self, qw: QuantizedWeight) -> None:
        if qw.spec != self.spec or qw.codes.shape != self.codes.shape:
            raise ValueError(f"weight {qw.spec.name} {tuple(qw.codes.shape)} does not fit "
                             f"{self.spec.name} {tuple(self.codes.shape)}")
        self.codes, self.scale, self.offset = qw.codes, qw.scale, qw.offset
        self._weight_changed()

    def _weight_changed(self) -> None:
        pass

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return self.qweight.dequantize(dtype)


class _QuantMatmul(torch.autograd.Function):
    """``x @ W.T`` through the module's backend; backward gives ``dL/dx`` only (the codes are frozen)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, module: QuantLinear) -> torch.Tensor:
        ctx.module = module
        return module._matmul(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad @ ctx.module.dequantize(grad.dtype), None


class QuantLinear(_QuantWeightHolder):
    """A linear layer with an int8 or int4 weight.

    ``exact=True`` keeps activations in floating point (weight-only quantization); ``False`` also lets
    the choice use kernels that quantize activations (fbgemm dynamic int8). ``backend`` forces a kernel
    by name (see ``speechllm.quant.BACKENDS``); ``"auto"`` measures. ``act_bits`` < 16 rounds the input
    per token to that many bits first (simulated W4A8 / W4A4, for quality studies).
    """

    def __init__(self, in_features: int, out_features: int, spec: QuantSpec = INT4, bias: bool = False,
                 *, exact: bool = True, backend: str = "auto", act_bits: int = 16,
                 scale_dtype: torch.dtype = torch.float16, device: torch.device | str | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.exact, self.backend, self.act_bits = exact, backend, act_bits
        self._init_buffers(spec, out_features, in_features, scale_dtype, device)
        zeros = torch.zeros(out_features, device=device)
        self.bias = nn.Parameter(zeros, requires_grad=False) if bias else None
        self._prepared: dict[str, Any] = {}
        self._chosen: dict[str, Backend] = {}
        self._compact_from: str | None = None  # backend whose prepared copy stands in for ``codes``

    @classmethod
    def from_weight(cls, qw: QuantizedWeight, bias: torch.Tensor | None = None, **kwargs: Any) -> QuantLinear:
        n, k = qw.shape
        # built on the meta device: its placeholder buffers are replaced at once, never filled
        layer = cls(k, n, qw.spec, bias is not None, scale_dtype=qw.scale.dtype, device="meta", **kwargs)
        layer.set_weight(qw)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(qw.codes.device, torch.get_default_dtype(), copy=True),
                                      requires_grad=False)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec = INT4, **kwargs: Any) -> QuantLinear:
        return cls.from_weight(quantize_weight(linear.weight, spec), linear.bias, **kwargs)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The float dtype this layer computes in (peft keeps LoRA adapters in it: fp32)."""
        return self.bias.dtype if self.bias is not None else torch.float32

    def _weight_changed(self) -> None:
        self._compact_from = None
        self._prepared.clear()
        self._chosen.clear()

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> QuantLinear:
        self.uncompact()
        self._weight_changed()  # prepared copies live on the old device
        return super()._apply(fn, *args, **kwargs)

    # --- holding the weight once ---------------------------------------------------------------

    def _codes(self) -> torch.Tensor:
        if self._compact_from is None:
            return self.codes
        return BACKENDS[self._compact_from].codes_from_state(self._prepared[self._compact_from])

    def compact(self) -> bool:
        """Free ``codes`` if the chosen kernel's copy can give them back; True if it did."""
        names = {b.name for b in self._chosen.values()}
        if self._compact_from is not None or len(names) != 1:
            return self._compact_from is not None
        name = names.pop()
        backend, state = BACKENDS[name], self._prepared[name]
        if backend.codes_from_state is None:
            return False
        if not (backend.round_trip and backend.round_trip(state)):  # not known exact: read them back
            codes = backend.codes_from_state(state)
            if codes is None or not torch.equal(codes, self.codes):
                return False
        self._compact_from = name
        self.codes = None
        return True

    def uncompact(self) -> None:
        if self._compact_from is not None:
            codes = self._codes()
            self._compact_from = None
            self.codes = codes

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self._compact_from is not None:
            destination[prefix + "codes"] = self._codes()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        if any(prefix + name in state_dict for name in ("codes", "scale", "offset")):  # not a LoRA-only load
            self.uncompact()
            self._weight_changed()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def backend_for(self, x: torch.Tensor) -> Backend:
        """The backend used for an input ``[M, K]`` (chosen, prepared and cached on first use)."""
        key = bucket(x.shape[0])
        chosen = self._chosen.get(key)
        if chosen is None:
            if self.backend == "auto":
                chosen = choose(self.qweight, x, self._prepared, self.exact)
            else:
                chosen = BACKENDS[self.backend]
            self._chosen[key] = chosen
            if chosen.name not in self._prepared:
                self._prepared[chosen.name] = chosen.prepare(self.qweight)
            keep = {b.name for b in self._chosen.values()} | {self._compact_from}
            for name in [n for n in self._prepared if n not in keep]:
                del self._prepared[name]
        return chosen

    def takes_rows_together(self) -> bool:
        """Whether the kernel chosen for decode-size inputs multiplies a few rows for about the price of
        one (then a verify pass scores all its rows in one call)."""
        chosen = self._chosen.get("decode")
        return chosen is not None and chosen.rows_together

    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        backend = self.backend_for(x)
        return backend.run(self._prepared[backend.name], x)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        """``self(x)`` without the module machinery (hooks, autograd, the empty-input case), for a layer
        without bias or activation rounding: what a decode loop calls a hundred times a token."""
        return self._matmul(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = fake_quantize_activations(x.reshape(-1, self.in_features), self.act_bits)
        if x2.shape[0] == 0:
            y = x2.new_zeros(0, self.out_features)
        elif torch.is_grad_enabled() and x2.requires_grad:
            y = _QuantMatmul.apply(x2, self)
        else:
            y = self._matmul(x2)
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*lead, self.out_features)

    def describe(self) -> dict:
        """How this module is saved (``quantization_config.modules`` in config.json)."""
        return {"type": "linear", "format": self.spec.name, "exact": self.exact, "act_bits": self.act_bits}

    def extra_repr(self) -> str:
        chosen = ",".join(f"{k}={b.name}" for k, b in self._chosen.items()) or self.backend
        return (f"in_features={self.in_features}, out_features={self.out_features}, {self.spec.name}, "
                f"bias={self.bias is not None}, backend={chosen}")


def embedding_output_scale(embedding: nn.Module) -> float:
    """The factor an embedding module applies to its rows (Gemma's ``embed_scale``; 1 for most)."""
    scale = getattr(embedding, "embed_scale", None)
    if scale is None:
        scale = getattr(embedding, "output_scale", 1.0)
    if isinstance(scale, torch.Tensor) and scale.is_meta:  # a model built empty: the caller knows it
        raise ValueError("the embedding's row scale is on the meta device; pass it from the saved formats")
    return float(scale)


class QuantEmbedding(_QuantWeightHolder):
    """A token embedding with a quantized table: only the looked-up rows are dequantized."""

    def __init__(self, num_embeddings: int, embedding_dim: int, spec: QuantSpec = INT8,
                 padding_idx: int | None = None, *, scale_dtype: torch.dtype = torch.float16,
                 device: torch.device | str | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self._init_buffers(spec, num_embeddings, embedding_dim, scale_dtype, device)
        self.out_dtype = torch.float32
        self.output_scale = 1.0  # Gemma multiplies looked-up rows by sqrt(hidden size)

    @classmethod
    def from_weight(cls, qw: QuantizedWeight, padding_idx: int | None = None,
                    output_scale: float = 1.0) -> QuantEmbedding:
        n, k = qw.shape
        emb = cls(n, k, qw.spec, padding_idx, scale_dtype=qw.scale.dtype, device="meta")  # buffers replaced
        emb.set_weight(qw)
        emb.output_scale = float(output_scale)
        return emb

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, spec: QuantSpec = INT8) -> QuantEmbedding:
        return cls.from_weight(quantize_weight(embedding.weight, spec), embedding.padding_idx,
                               embedding_output_scale(embedding))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.qweight.rows(ids.reshape(-1)).dequantize(self.out_dtype)
        if self.output_scale != 1.0:
            rows = rows * self.output_scale
        return rows.reshape(*ids.shape, self.embedding_dim)

    def describe(self) -> dict:
        scaled = {"output_scale": self.output_scale} if self.output_scale != 1.0 else {}
        return {"type": "embedding", "format": self.spec.name, **scaled}

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, {self.spec.name}"
