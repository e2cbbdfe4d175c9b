"""Low-bit weight formats: what a quantized weight holds, how codes are packed, the reference dequantization.

Two formats, chosen by bit width from ``FORMATS``:

* **int8**, symmetric: ``w = q * scale`` with ``q`` in [-127, 127]; one scale per output channel
  (``group_size=-1``) or per group of input columns (GGUF Q8_0 is int8 with group 32).
* **int4**, asymmetric: ``w = q * scale + offset`` with ``q`` in [0, 15]; one (scale, offset) per group
  of ``group_size`` input columns (32/64/128, or -1 for the whole row). Two codes per byte, the even
  column in the low nibble. GGUF Q4_1 is exactly int4 with group 32 (offset = its ``m``); Q4_0 is int4
  with ``offset = -8 * scale``.

Scales and offsets are stored in fp16 by default (as GGUF does: 1/16 byte per weight at group 32,
their rounding far below a 4-bit step); the reference dequantization computes in fp32.
Plain tensor code: it runs on any device.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class QuantSpec:
    """A weight format: bit width and group size (-1: one group per output row)."""

    bits: int = 4
    group_size: int = 32

    def group(self, in_features: int) -> int:
        return in_features if self.group_size in (-1, 0) else self.group_size

    def n_groups(self, in_features: int) -> int:
        g = self.group(in_features)
        if in_features % g:
            raise ValueError(f"in_features {in_features} is not a multiple of the group size {g}")
        return in_features // g

    @property
    def name(self) -> str:
        return f"int{self.bits}-" + ("channel" if self.group_size in (-1, 0) else f"g{self.group_size}")


def spec_from_name(name: str) -> QuantSpec:
    """The inverse of :attr:`QuantSpec.name`: ``int4-g32`` -> ``QuantSpec(4, 32)``."""
    bits, group = name.removeprefix("int").split("-")
    return QuantSpec(int(bits), -1 if group == "channel" else int(group.removeprefix("g")))


INT4 = QuantSpec(4, 32)  # the default weight format (GGUF Q4_1's)
INT8 = QuantSpec(8, -1)


@dataclass(frozen=True)
class QuantizedWeight:
    """One quantized ``[out_features, in_features]`` matrix."""

    spec: QuantSpec
    codes: torch.Tensor  # int8 [N, K] (int8) or uint8 [N, K // 2] (int4)
    scale: torch.Tensor  # [N, n_groups]
    offset: torch.Tensor | None = None  # [N, n_groups], int4 only

    @property
    def shape(self) -> tuple[int, int]:
        n = self.codes.shape[0]
        return n, self.codes.shape[1] * (2 if self.spec.bits == 4 else 1)

    @property
    def device(self) -> torch.device:
        return self.codes.device

    @property
    def dtype(self) -> torch.dtype:
        """The codes' integer dtype (peft reads it, and never casts adapters to an integer dtype)."""
        return self.codes.dtype

    @property
    def nbytes(self) -> int:
        tensors = [self.codes, self.scale] + ([self.offset] if self.offset is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return FORMATS[self.spec.bits].dequantize(self).to(dtype)

    def int_codes(self) -> torch.Tensor:
        """Unpacked integer codes ``[N, K]`` (int8 for int8, uint8 in [0, 15] for int4)."""
        return unpack_int4(self.codes) if self.spec.bits == 4 else self.codes

    def rows(self, index: torch.Tensor) -> QuantizedWeight:
        """The weight restricted to some output rows (an embedding lookup)."""
        off = self.offset[index] if self.offset is not None else None
        return replace(self, codes=self.codes[index], scale=self.scale[index], offset=off)

    def to(self, device: torch.device | str) -> QuantizedWeight:
        off = self.offset.to(device) if self.offset is not None else None
        return replace(self, codes=self.codes.to(device), scale=self.scale.to(device), offset=off)


# --- packing -------------------------------------------------------------------------------------

def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """``[..., K]`` codes in [0, 15] → ``[..., K // 2]`` uint8, even column in the low nibble."""
    q = q.to(torch.uint8)
    return q[..., 0::2] | (q[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``[..., K // 2]`` uint8 → ``[..., K]`` uint8 codes."""
    return torch.stack([packed & 15, packed >> 4], dim=-1).flatten(-2)


def _grouped(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    n, k = w.shape
    return w.reshape(n, spec.n_groups(k), spec.group(k))


# --- the two formats -----------------------------------------------------------------------------

class Int8Format:
    """Symmetric int8, per output channel or per group."""

    bits = 8
    qmax = 127

    def quantize(self, w: torch.Tensor, spec: QuantSpec, clip: torch.Tensor | None, dtype: torch.dtype
                 ) -> QuantizedWeight:
        g = _grouped(w.float(), spec)
        amax = g.abs().amax(-1)
        if clip is not None:
            amax = amax * clip
        scale = (amax / self.qmax).to(dtype).float().clamp_min(1e-10)  # round with the stored scale
        q = torch.round(g / scale[..., None]).clamp(-self.qmax, self.qmax).to(torch.int8)
        return QuantizedWeight(spec, q.reshape(w.shape), scale.to(dtype))

    def dequantize(self, qw: QuantizedWeight) -> torch.Tensor:
        n, k = qw.shape
        g = qw.codes.reshape(n, qw.scale.shape[1], -1).float()
        return (g * qw.scale.float()[..., None]).reshape(n, k)


class Int4Format:
    """Asymmetric group-wise int4 (min/max grid), packed two per byte."""

    bits = 4
    qmax = 15

    def quantize(self, w: torch.Tensor, spec: QuantSpec, clip: torch.Tensor | None, dtype: torch.dtype
                 ) -> QuantizedWeight:
        g = _grouped(w.float(), spec)
        lo, hi = g.amin(-1), g.amax(-1)
        if clip is not None:  # shrink the range (AWQ's clipping search)
            lo, hi = lo * clip, hi * clip
        scale = ((hi - lo) / self.qmax).to(dtype).float().clamp_min(1e-10)
        lo = lo.to(dtype).float()
        q = torch.round((g - lo[..., None]) / scale[..., None]).clamp(0, self.qmax)
        return QuantizedWeight(spec, pack_int4(q.reshape(w.shape)), scale.to(dtype), lo.to(dtype))

    def dequantize(self, qw: QuantizedWeight) -> torch.Tensor:
        n, k = qw.shape
        g = unpack_int4(qw.codes).reshape(n, qw.scale.shape[1], -1).float()
        return (g * qw.scale.float()[..., None] + qw.offset.float()[..., None]).reshape(n, k)


FORMATS: dict[int, Int8Format | Int4Format] = {8: Int8Format(), 4: Int4Format()}


def quantize_weight(w: torch.Tensor, spec: QuantSpec, clip: torch.Tensor | None = None,
                    scale_dtype: torch.dtype = torch.float16) -> QuantizedWeight:
    """Round-to-nearest quantization of a ``[N, K]`` float matrix (``clip``: per-group range factor)."""
    if spec.bits not in FORMATS:
        raise ValueError(f"no {spec.bits}-bit weight format (have {sorted(FORMATS)})")
    return FORMATS[spec.bits].quantize(w.detach(), spec, clip, scale_dtype)


def requantize(qw: QuantizedWeight, spec: QuantSpec, rows_per_chunk: int = 4096) -> QuantizedWeight:
    """Change a weight's format chunk by chunk (never the whole matrix in fp32): e.g. Q8_0 → per channel."""
    dtype = qw.scale.dtype
    parts = [quantize_weight(qw.rows(slice(i, i + rows_per_chunk)).dequantize(), spec, scale_dtype=dtype)
             for i in range(0, qw.shape[0], rows_per_chunk)]
    off = torch.cat([p.offset for p in parts]) if parts[0].offset is not None else None
    codes, scale = torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts])
    return QuantizedWeight(spec, codes, scale, off)


def fake_quantize_activations(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-token round trip through ``bits``-bit integers (simulated A4/A8); identity at ≥ 16."""
    if bits >= 16:
        return x
    qmax = 2 ** (bits - 1) - 1
    scale = (x.abs().amax(-1, keepdim=True) / qmax).clamp_min(1e-8)
    q = torch.round(x / scale).clamp(-qmax - 1, qmax) * scale
    return x + (q - x).detach()  # straight-through, so trainable parts upstream still get gradients


def dequantize_weight(qw: QuantizedWeight, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The reference dequantization every kernel is tested against."""
    return qw.dequantize(dtype)
