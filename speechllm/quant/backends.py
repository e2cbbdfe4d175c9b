"""Matmul kernels for quantized weights: a registry, and a choice made by measuring once per shape.

A backend computes ``x @ W.T`` for ``x`` ``[M, K]`` and a :class:`QuantizedWeight` ``W`` ``[N, K]``.
``prepare`` turns the weight into whatever the kernel reads (a re-packed copy, or the weight itself);
``run`` does the product. ``exact`` backends keep activations in floating point (fp32 or bf16), so they
agree with the dequantized reference up to float rounding; the others quantize activations too.

:func:`choose` times every applicable backend on the first input of each (device, format, N, K, M-bucket)
and remembers the fastest, in this process and in a small JSON file per machine
(``$SPEECHLLM_KERNEL_CACHE``, default ``~/.cache/speechllm/kernels.json``; ``0`` turns it off).
"""

from __future__ import annotations

import ctypes
import json
import os
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..files import atomic_write_json
from ..native import load, traced
from .formats import QuantizedWeight, QuantSpec, pack_int4

# Row-exact products: a row multiplied in a batch of up to ROW_EXACT_UP_TO rows gets the same numbers as
# alone (what speculative decoding's verify pass relies on: its k rows must score as k single steps do).
# Such batches use the backend chosen for one row (one "decode" bucket), and every backend is row-exact
# there: the int4 / int8 weight-only kernels and int8-rows (one activation scale per row) are; the float
# matmul and dyn-int8 (one activation scale per call) run such a batch one row at a time.
ROW_EXACT_UP_TO = 16
VERIFY_ROWS = 8  # the decode bucket is timed on one row and on this many (a verify pass's rows)


def rows_alone(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``f(x)`` for a row-wise ``f`` ([..., K] -> [..., N]); 2 to ``ROW_EXACT_UP_TO`` rows one at a time."""
    rows = x.reshape(-1, x.shape[-1])
    if not 1 < len(rows) <= ROW_EXACT_UP_TO:
        return f(x)
    return torch.cat([f(r) for r in rows.split(1)]).reshape(*x.shape[:-1], -1)


@cache
def _batched_rows_match(k: int, n: int, dtype: torch.dtype, threads: int) -> bool:
    """Whether ``bmm`` over one-row products gives what ``F.linear`` gives one row (checked once per
    shape: which kernel runs depends on the shapes, not the values; it holds for most shapes, not all)."""
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(3, k, generator=gen, dtype=dtype), torch.randn(n, k, generator=gen, dtype=dtype)
    batched = torch.bmm(x[:, None], w.t().expand(3, k, n))[:, 0]
    return all(torch.equal(batched[i], F.linear(x[i:i + 1], w)[0]) for i in range(3))


def linear_rows_alone(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``F.linear(x, weight)``, each of 2 to ``ROW_EXACT_UP_TO`` rows getting the numbers it gets alone (a
    float matmul of several rows takes another code path, with other rounding, than that of one row):
    as one batch of one-row products where that matches, else one row at a time."""
    rows = x.reshape(-1, x.shape[-1])
    if not 1 < len(rows) <= ROW_EXACT_UP_TO:
        return F.linear(x, weight)
    n, k = weight.shape
    if not _batched_rows_match(k, n, weight.dtype, torch.get_num_threads()):
        return rows_alone(lambda r: F.linear(r, weight), x)
    return torch.bmm(rows[:, None], weight.t().expand(len(rows), k, n)).reshape(*x.shape[:-1], n)


@dataclass(frozen=True)
class Backend:
    name: str
    supports: Callable[[QuantSpec, int, int, torch.device], bool]  # (spec, N, K, device)
    prepare: Callable[[QuantizedWeight], Any]
    run: Callable[[Any, torch.Tensor], torch.Tensor]
    exact: bool = True
    auto: bool = True  # tried by the automatic choice
    rows_together: bool = False  # a few rows cost about what one does (score a verify pass in one call)
    # the canonical packed codes back from a prepared state, when the kernel's copy can stand in for them
    # (then the module drops its own copy: see ``QuantLinear.compact``); returns None when it cannot
    codes_from_state: Callable[[Any], torch.Tensor | None] | None = None
    # True when ``codes_from_state`` is known to give this state's codes back exactly (its round trip
    # checked once per process on sample weights): ``compact`` then trusts it without reading them back
    round_trip: Callable[[Any], bool] | None = None


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    return backend


def _has(op: str) -> bool:
    return hasattr(torch.ops.aten, op)


# --- dequantize + matmul: always works ------------------------------------------------------------

def _dequant_run(qw: QuantizedWeight, x: torch.Tensor) -> torch.Tensor:
    return linear_rows_alone(x, qw.dequantize(x.dtype))


register_backend(Backend("dequant", lambda s, n, k, d: True, lambda qw: qw, _dequant_run))


# --- torch's int4 "tinygemm" kernels (bf16 activations) -------------------------------------------

def _int4_scales_zeros(qw: QuantizedWeight) -> torch.Tensor:
    """tinygemm reads ``w = (q - 8) * scale + zero``: ``[groups, N, 2]`` in bf16."""
    zero = qw.offset.float() + 8 * qw.scale.float()
    return torch.stack([qw.scale.float(), zero], -1).transpose(0, 1).contiguous().to(torch.bfloat16)


def _int4pack_supported(spec: QuantSpec, n: int, k: int, device: torch.device, dev: str) -> bool:
    return (spec.bits == 4 and device.type == dev and spec.group(k) in (32, 64, 128, 256)
            and n % 16 == 0 and k % 32 == 0)


def _int4pack_cpu_prepare(qw: QuantizedWeight) -> tuple:
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(qw.int_codes().to(torch.int32), 1)
    return packed, qw.spec.group(qw.shape[1]), _int4_scales_zeros(qw)


def _int4pack_cpu_run(state: tuple, x: torch.Tensor) -> torch.Tensor:
    packed, group, sz = state
    return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), packed, group, sz).to(x.dtype)


def _untile_int4(packed: torch.Tensor) -> torch.Tensor:
    """Read torch's CPU int4 layout: 64-row tiles; byte ``[t*K + k, j]`` = rows ``t*64+j`` | ``t*64+32+j``."""
    n, k = packed.shape[0], packed.shape[1] * 2
    tiles = packed.view(n // 64, k, 32)
    q = torch.stack([tiles & 15, tiles >> 4], 1).transpose(2, 3)  # [tiles, 2, 32, K]
    return pack_int4(q.reshape(n, k))


@lru_cache(maxsize=1)
def _int4pack_layout_known() -> bool:
    """Check once that this torch build still packs int4 the way ``_untile_int4`` reads it."""
    gen = torch.Generator().manual_seed(0)
    for n, k in ((128, 64), (192, 640)):
        q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        if packed.shape != (n, k // 2) or not torch.equal(_untile_int4(packed), pack_int4(q)):
            return False
    return True


def _int4pack_cpu_round_trip(state: tuple) -> bool:
    return state[0].shape[0] % 64 == 0 and _int4pack_layout_known()


def _int4pack_cpu_codes(state: tuple) -> torch.Tensor | None:
    return _untile_int4(state[0]) if _int4pack_cpu_round_trip(state) else None


if _has("_weight_int4pack_mm_for_cpu"):
    register_backend(Backend(
        "int4pack-cpu", lambda s, n, k, d: _int4pack_supported(s, n, k, d, "cpu"),
        _int4pack_cpu_prepare, _int4pack_cpu_run, codes_from_state=_int4pack_cpu_codes,
        round_trip=_int4pack_cpu_round_trip))


def _inner_k_tiles(k: int) -> int:
    """tinygemm packs K in tiles of 16 x inner_k_tiles (2, 4 or 8): the largest that divides K."""
    return next(t for t in (8, 4, 2) if k % (16 * t) == 0)


def _int4pack_cuda_prepare(qw: QuantizedWeight, inner_k_tiles: int | None = None) -> tuple:
    q = qw.int_codes()
    high_first = (q[:, 0::2] << 4 | q[:, 1::2]).to(torch.uint8).contiguous()
    tiles = inner_k_tiles or _inner_k_tiles(qw.shape[1])
    packed = torch.ops.aten._convert_weight_to_int4pack(high_first, tiles)
    return packed, qw.spec.group(qw.shape[1]), _int4_scales_zeros(qw)


def _int4pack_cuda_run(state: tuple, x: torch.Tensor) -> torch.Tensor:
    packed, group, sz = state
    return torch.ops.aten._weight_int4pack_mm(x.to(torch.bfloat16), packed, group, sz).to(x.dtype)


if _has("_weight_int4pack_mm"):
    register_backend(Backend(
        "int4pack-cuda", lambda s, n, k, d: _int4pack_supported(s, n, k, d, "cuda"),
        _int4pack_cuda_prepare, _int4pack_cuda_run))


# --- torch's int8 weight-only kernel (bf16 activations) -------------------------------------------

def _int8pack_run(state: tuple, x: torch.Tensor) -> torch.Tensor:
    codes, scale = state
    return torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16), codes, scale).to(x.dtype)


def _aligned(t: torch.Tensor, alignment: int = 64) -> torch.Tensor:
    """``t`` itself, or an aligned copy: the int8 kernel crashes on codes at odd addresses (as
    ``safetensors.load_file`` can give them)."""
    aligned = t.is_contiguous() and t.data_ptr() % alignment == 0
    return t if aligned else t.clone(memory_format=torch.contiguous_format)


def _int8pack_prepare(qw: QuantizedWeight) -> tuple:
    return _aligned(qw.codes), qw.scale[:, 0].to(torch.bfloat16)


if _has("_weight_int8pack_mm"):
    register_backend(Backend(
        "int8pack", lambda s, n, k, d: s.bits == 8 and s.group_size in (-1, 0), _int8pack_prepare,
        _int8pack_run))


# --- fbgemm / onednn dynamic int8 (activations quantized per tensor on the fly) -------------------

@lru_cache(maxsize=1)
def _reduce_range() -> bool:
    """fbgemm's AVX2 path can saturate 16-bit sums of u8*s8 pairs; AVX512-VNNI cannot."""
    try:
        return "avx512_vnni" not in Path("/proc/cpuinfo").read_text()
    except OSError:
        return True


# fbgemm's prepack time grows faster than the row count (a 262144 x 640 head, Gemma 3's: ~2.2 s whole,
# ~0.8 s in blocks of 65536 rows), so tall weights are packed in row blocks. The products are the same:
# the activations' per-tensor quantization does not depend on the weight, and each output column is
# computed from its own row alone.
DYN8_BLOCK_ROWS = 65536


def _dyn8_prepare(qw: QuantizedWeight, block_rows: int | None = None) -> tuple:
    """fbgemm's packed copy, one per block of ``block_rows`` output rows."""
    n, rows = qw.shape[0], block_rows or DYN8_BLOCK_ROWS
    scale = qw.scale[:, 0].double()
    blocks = []
    with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao
        warnings.simplefilter("ignore")
        for start in range(0, n, rows):
            end = min(start + rows, n)
            qt = torch._make_per_channel_quantized_tensor(
                qw.codes[start:end], scale[start:end], torch.zeros(end - start, dtype=torch.long), 0)
            blocks.append(torch.ops.quantized.linear_prepack(qt, None))
    return tuple(blocks)


def _dyn8_codes(blocks: tuple) -> torch.Tensor:
    return torch.cat([torch.ops.quantized.linear_unpack(b)[0].int_repr() for b in blocks])


@lru_cache(maxsize=1)
def _dyn8_round_trip_known() -> bool:
    """Check once that fbgemm gives the int8 codes it packed back unchanged (blocks included)."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(-127, 128, (96, 64), dtype=torch.int8, generator=gen)
    scale = (torch.rand(96, 1, generator=gen) / 100 + 1e-3).half()
    qw = QuantizedWeight(QuantSpec(8, -1), codes, scale)
    return torch.equal(_dyn8_codes(_dyn8_prepare(qw, block_rows=64)), codes)


def _dyn8_product(blocks: tuple, x32: torch.Tensor) -> torch.Tensor:
    parts = [torch.ops.quantized.linear_dynamic(x32, b, _reduce_range()) for b in blocks]
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def _dyn8_run(blocks: tuple, x: torch.Tensor) -> torch.Tensor:
    x32 = x.float().reshape(-1, x.shape[-1]).contiguous()
    return rows_alone(lambda r: _dyn8_product(blocks, r), x32).reshape(*x.shape[:-1], -1).to(x.dtype)


if any(e in torch.backends.quantized.supported_engines for e in ("fbgemm", "x86", "onednn")):
    register_backend(Backend(
        "dyn-int8", lambda s, n, k, d: s.bits == 8 and s.group_size in (-1, 0) and d.type == "cpu",
        _dyn8_prepare, _dyn8_run, exact=False, codes_from_state=_dyn8_codes,
        round_trip=lambda blocks: _dyn8_round_trip_known()))


# --- int8 weights, activations quantized per row: a native kernel (int8_rows.c) -----------------------

@cache
def _int8_rows_library() -> ctypes.CDLL | None:
    return load(Path(__file__).with_name("int8_rows.c"), {"speechllm_int8_rows": "v:piipppippppi"})


def _int8_rows_prepare(qw: QuantizedWeight) -> tuple:
    codes = qw.codes.contiguous()
    return codes, qw.scale[:, 0].float().contiguous(), codes.sum(1, dtype=torch.int32)


def _int8_rows_run(state: tuple, x: torch.Tensor) -> torch.Tensor:
    codes, scale, sums = state
    n, k = codes.shape
    x32 = x.float().reshape(-1, k).contiguous()
    rows = x32.shape[0]
    out = torch.empty(rows, n)
    quantized, row_scales = torch.empty(rows * k, dtype=torch.uint8), torch.empty(rows)
    zeros = torch.empty(rows, dtype=torch.int32)
    with traced("speechllm::int8_rows"):
        _int8_rows_library().speechllm_int8_rows(
            x32.data_ptr(), rows, k, codes.data_ptr(), scale.data_ptr(), sums.data_ptr(), n, out.data_ptr(),
            quantized.data_ptr(), row_scales.data_ptr(), zeros.data_ptr(), torch.get_num_threads())
    return out.reshape(*x.shape[:-1], n).to(x.dtype)


register_backend(Backend(
    "int8-rows", lambda s, n, k, d: (s.bits == 8 and s.group_size in (-1, 0) and d.type == "cpu"
                                     and _int8_rows_library() is not None),
    _int8_rows_prepare, _int8_rows_run, exact=False, codes_from_state=lambda state: state[0],
    round_trip=lambda state: True, rows_together=True))


# --- int4 weights, activations quantized per block of 32: a native kernel (int4_rows.c) -------------

@cache
def _int4_rows_library() -> ctypes.CDLL | None:
    lib = load(Path(__file__).with_name("int4_rows.c"),
               {"speechllm_int4_rows": "i:piippipi", "speechllm_int4_rows_vector": "i:"})
    return lib if lib is not None and lib.speechllm_int4_rows_vector() else None


def _int4_rows_supported(spec: QuantSpec, n: int, k: int, device: torch.device) -> bool:
    return (spec.bits == 4 and spec.group(k) == 32 and n % 16 == 0 and k % 32 == 0 and device.type == "cpu"
            and _int4_rows_library() is not None)


def _int4_rows_prepare(qw: QuantizedWeight) -> tuple:
    """The codes as the kernel reads them: per block of 16 weight rows and group of 32, four 64-byte runs,
    byte 4c + t of run s holding row c's codes at k = 8s + t (low nibble) and 8s + 4 + t (high nibble);
    and per block and group the 16 scales then the 16 offsets (fp16, the formats' scale dtype)."""
    n, k = qw.shape
    groups = k // 32
    q = qw.int_codes().reshape(n // 16, 16, groups, 4, 2, 4)  # block, c, group, s, half, t
    q = q.permute(0, 2, 3, 1, 5, 4)  # block, group, s, c, t, half
    packed = (q[..., 0] | (q[..., 1] << 4)).contiguous().reshape(-1)
    scale, offset = (t.reshape(n // 16, 16, groups).transpose(1, 2) for t in (qw.scale, qw.offset))
    scales = torch.cat([scale, offset], -1).to(torch.float16).contiguous()
    return packed, scales, n, k, packed.data_ptr(), scales.data_ptr()  # the tensors hold the pointers' memory


def _int4_rows_codes(state: tuple) -> torch.Tensor:
    packed, _, n, k, *_ = state
    q = packed.reshape(n // 16, k // 32, 4, 16, 4)
    q = torch.stack([q & 15, q >> 4], -1).permute(0, 3, 1, 2, 5, 4)  # block, c, group, s, half, t
    return pack_int4(q.reshape(n, k))


def _int4_rows_run(state: tuple, x: torch.Tensor) -> torch.Tensor:
    _, _, n, k, packed, scales = state
    x32 = x if x.dtype == torch.float32 and x.is_contiguous() else x.float().contiguous()
    out = torch.empty(*x.shape[:-1], n)
    with traced("speechllm::int4_rows"):
        failed = _int4_rows_library().speechllm_int4_rows(
            x32.data_ptr(), x32.numel() // k, k, packed, scales, n, out.data_ptr(), torch.get_num_threads())
    if failed:
        raise MemoryError(f"int4-rows: no memory to quantize {x32.numel() // k} rows of activations")
    return out if x.dtype == torch.float32 else out.to(x.dtype)


register_backend(Backend(
    "int4-rows", _int4_rows_supported, _int4_rows_prepare, _int4_rows_run, exact=False,
    codes_from_state=_int4_rows_codes, round_trip=lambda state: True, rows_together=True))


# --- fused dequantize-matmul generated by torch.compile (opt-in: slow to build, slow here on CPU) ---

@lru_cache(maxsize=1)
def _compiled_dequant_linear() -> Callable:
    return torch.compile(_dequant_run)  # shapes turn dynamic after the first recompile


register_backend(Backend(
    "compile", lambda s, n, k, d: True, lambda qw: qw,
    lambda qw, x: _compiled_dequant_linear()(qw, x), auto=False))


# --- the choice ----------------------------------------------------------------------------------

def bucket(m: int) -> str:
    return "decode" if m <= ROW_EXACT_UP_TO else ("small" if m <= 32 else "prefill")


def _cache_path() -> Path | None:
    env = os.environ.get("SPEECHLLM_KERNEL_CACHE", "")
    if env == "0":
        return None
    return Path(env) if env else Path.home() / ".cache" / "speechllm" / "kernels.json"


def _machine(device: torch.device) -> str:
    cuda = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if cuda else torch.backends.cpu.get_cpu_capability()
    return f"torch{torch.__version__}|{device.type}|{name}|threads{torch.get_num_threads()}"


_CHOICES: dict[str, str] = {}
_LOADED = False


def _load_choices() -> None:
    global _LOADED
    _LOADED = True
    path = _cache_path()
    if path and path.is_file():
        try:
            _CHOICES.update({k: v for k, v in json.loads(path.read_text()).items() if v in BACKENDS})
        except (OSError, ValueError):
            pass


def _save_choices() -> None:
    path = _cache_path()
    if not path:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, _CHOICES, durable=False, indent=0, sort_keys=True)
    except OSError:
        pass


def candidates(spec: QuantSpec, n: int, k: int, device: torch.device, exact: bool = True) -> list[Backend]:
    """Backends the automatic choice may try for this weight (``dequant`` always among them)."""
    return [b for b in BACKENDS.values()
            if b.auto and (b.exact or not exact) and b.supports(spec, n, k, device)]


def time_backend(backend: Backend, state: Any, x: torch.Tensor, repeats: int = 7) -> float:
    """Median seconds per call, after two warm-up calls."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        for _ in range(2):
            backend.run(state, x)
        times = []
        for _ in range(repeats):
            sync()
            t0 = time.perf_counter()
            backend.run(state, x)
            sync()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def choose(qw: QuantizedWeight, x: torch.Tensor, prepared: dict[str, Any], exact: bool = True) -> Backend:
    """The fastest applicable backend for this weight and input size (measured once, then cached).
    Decode-size inputs are timed as one row plus a verify pass of ``VERIFY_ROWS`` rows.

    ``prepared`` holds the prepared weights per backend name (the caller's, e.g. a module's); entries
    for backends tried but not chosen stay there for the caller to drop.
    """
    if not _LOADED:
        _load_choices()
    n, k = qw.shape
    size = bucket(x.shape[0])
    inputs = [x]
    if size == "decode":
        size, inputs = f"decode+verify{VERIFY_ROWS}", [x[:1], x[:1].expand(VERIFY_ROWS, -1)]
    options = candidates(qw.spec, n, k, x.device, exact)
    # the choice among these candidates: a process with other kernels at hand (SPEECHLLM_NATIVE=0, no
    # compiler) chooses and keeps its own, and never hands its choice to the others
    among = "+".join(sorted(b.name for b in options))
    key = f"{_machine(x.device)}|{qw.spec.name}|{n}x{k}|{size}|{'exact' if exact else 'any'}|{among}"
    name = _CHOICES.get(key)
    if name is None:
        timings = {}
        for b in options:
            if b.name not in prepared:
                prepared[b.name] = b.prepare(qw)
            try:
                timings[b.name] = sum(time_backend(b, prepared[b.name], x) for x in inputs)
            except RuntimeError:  # a kernel this build or machine cannot run after all
                prepared.pop(b.name, None)
        name = min(timings, key=timings.get)
        _CHOICES[key] = name
        _save_choices()
    return BACKENDS[name]
