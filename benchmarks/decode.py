"""End-to-end greedy decode speed and memory: transformers' fp32 ``generate`` vs the project's paths.

    .venv/bin/python benchmarks/decode.py                      # both models, every path
    .venv/bin/python benchmarks/decode.py --models smollm2 --new-tokens 64

Models: SmolLM2-135M-Instruct (real weights, from the zoo's GGUF) and a randomly initialised ~1.1B
Llama-shaped model (TinyLlama's shape: hidden 2048, MLP 5632, 22 layers, 32/4 heads, vocab 32000;
speed only; its int8/int4 rows are built straight into quantized modules, one fp32 matrix at a time).
Paths: fp32 / int8 / int4 weights, each decoded by transformers' ``generate`` and by
``speechllm.generation``'s engine (static KV cache, lean forward, fused low-bit projections; greedy,
speculative decoding off), plus int4 with speculative decoding on (SAM drafts; the same tokens).
For SmolLM2 one more path, "llama.cpp": the same GGUF file decoded by llama.cpp itself (its CPU build,
greedy, ``n_threads`` = ``--threads``), timed as the others are. It needs the optional
``pip install --no-deps llama-cpp-cffi`` (a prebuilt llama.cpp with a cffi binding, about 300 MB; not a
project dependency; ``--no-deps`` because its pins would take transformers back to 4.x); without it that
row is skipped with a note. The random 1.1B model has no GGUF: no row there.
llama.cpp's threads wait for each other by spinning: when other jobs keep the cores busy, asking for as
many threads as there are cores slows it far more than it slows torch (``--threads 1`` is fairer there).
Each model runs in its own process with its
three weight variants loaded; the paths then take turns, ``--repeats`` rounds of ``--new-tokens``
greedy tokens after a short prompt (tokens/s = new tokens / wall time of the whole call, prompt prefill
included, for every path alike), and each path's figure is its best round: other jobs sharing the
CPU only ever slow a run down, and taking turns exposes every path to the same conditions. Ratios are
against transformers' fp32 ``generate`` in the same run. "weight GB/s" is the bytes of the matrices a
decode step reads (every linear layer and the output layer; not the embedding table) times tokens/s,
beside the machine's copy bandwidth measured in the same process (``copy_gb_s``: read + write of a
256 MB tensor, best of 5): how close a path comes to the memory limit.
Weight memory counts parameters, buffers
and the kernels' re-packed copies (``speechllm.quant.model.weight_bytes``); "RSS added" is how much
the process grew while that variant loaded (allocator reuse makes it approximate).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from speechllm.zoo import DEFAULT_LLM

PATHS = [("fp32", "hf"), ("fp32", "engine"), ("int8", "hf"), ("int8", "engine"), ("int4", "hf"),
         ("int4", "engine"), ("int4", "speculative")]  # (weights, decoder)
LABELS = {"hf": "transformers generate", "engine": "speechllm engine",
          "speculative": "speechllm engine + SAM drafts", "llama.cpp": "llama.cpp (llama-cpp-cffi)"}
LLAMA_CPP = ("gguf", "llama.cpp")  # (weights, decoder): the zoo's GGUF as stored, decoded by llama.cpp
PROMPT = "The history of the Roman Empire begins"


def _smollm2(weights: str):
    from speechllm.llm import load_llm

    model, tok = load_llm(DEFAULT_LLM, quant={"fp32": "none"}.get(weights, weights))
    return model, tok(PROMPT, return_tensors="pt").input_ids


def _random_quantized(cfg, spec):
    """A random Llama built straight into quantized modules: one fp32 matrix at a time, never the model."""
    from transformers import LlamaForCausalLM

    from speechllm.quant.formats import INT8, quantize_weight
    from speechllm.quant.model import build_model

    with torch.device("meta"):
        shapes = {name: p.shape for name, p in LlamaForCausalLM(cfg).named_parameters()}
    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensors[name] = torch.ones(shape)
            continue
        w = torch.randn(shape, generator=gen) * cfg.initializer_range
        tensors[name] = quantize_weight(w, INT8 if "embed_tokens" in name or "lm_head" in name else spec)
    return build_model(cfg, tensors, body_exact=False)  # activations quantized too, as a GGUF import runs


def _llama_1b(weights: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    from speechllm.llm import prepare_kernels
    from speechllm.quant.formats import INT4, INT8

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
                      num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
                      tie_word_embeddings=False)
    if weights == "fp32":
        model = LlamaForCausalLM(cfg).eval()
    else:
        model = _random_quantized(cfg, INT4 if weights == "int4" else INT8)
        prepare_kernels(model)
    return model, torch.randint(0, 32000, (1, 8))


MODELS = {"smollm2": _smollm2, "llama-1b": _llama_1b}
GGUF_MODELS = {"smollm2"}  # the models whose weights come from a GGUF llama.cpp can load


def llama_cpp_binding():
    """llama-cpp-cffi's ``(ffi, lib)`` (llama.cpp's C API; CPU build), or the reason it can't be had.

    The wheel's library names one symbol of a newer libstdc++ than Debian 12's (``__cxa_call_terminate``,
    GCC 14, called only when an exception escapes a ``noexcept`` function): it is bound lazily, so
    loading succeeds on the older one."""
    os.environ.setdefault("LLAMA_CPP_BACKEND", "cpu")
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_LAZY)
    try:
        from llama.llama_cpp import ffi, lib
    except ImportError as e:
        return f"llama-cpp-cffi is not usable ({e}); pip install --no-deps llama-cpp-cffi"
    finally:
        sys.setdlopenflags(flags)
    return ffi, lib


def zoo_gguf() -> Path:
    """The GGUF file the zoo's ``DEFAULT_LLM`` loads from (what ``speechllm.llm.load_llm`` reads)."""
    from speechllm.zoo import resolve

    resolved = resolve(DEFAULT_LLM)
    path = Path(resolved.main_file or resolved.path)
    found = [path] if path.suffix == ".gguf" else sorted(path.glob("*.gguf"))
    if len(found) != 1:
        raise FileNotFoundError(f"{DEFAULT_LLM}: no single GGUF file at {path}")
    return found[0]


def gguf_read_bytes_per_token(path: Path) -> int:
    """``read_bytes_per_token`` for a GGUF: every matrix but the embedding table, which counts (once) as
    the output layer when the file ties the two."""
    from gguf import GGUFReader

    matrices = {t.name: int(t.n_bytes) for t in GGUFReader(path).tensors if len(t.shape) == 2}
    if "output.weight" in matrices:
        matrices.pop("token_embd.weight", None)
    return sum(matrices.values())


class LlamaCpp:
    """A GGUF loaded by llama.cpp (weights read into memory, not mapped, so RSS counts them), one context
    of ``threads`` threads, greedy sampling in llama.cpp."""

    def __init__(self, binding, gguf: Path, threads: int, n_ctx: int):
        self.ffi, self.lib = ffi, lib = binding
        params = lib.llama_model_default_params()
        params.n_gpu_layers, params.use_mmap = 0, False
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), params)
        if self.model == ffi.NULL:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        ctx_params = lib.llama_context_default_params()
        ctx_params.n_ctx = ctx_params.n_batch = n_ctx
        ctx_params.n_threads = ctx_params.n_threads_batch = threads
        self.ctx = lib.llama_init_from_model(self.model, ctx_params)
        if self.ctx == ffi.NULL:
            raise RuntimeError("llama.cpp could not make a context")
        self.sampler = lib.llama_sampler_init_greedy()

    def weight_bytes(self) -> int:
        return self.lib.llama_model_size(self.model)

    def generate(self, ids: list[int], new_tokens: int, stop_ids: frozenset[int] = frozenset()) -> list[int]:
        """``new_tokens`` greedy tokens after ``ids`` (fewer when one of ``stop_ids`` comes; it is kept):
        one prefill pass, then one pass per further token."""
        ffi, lib = self.ffi, self.lib
        lib.llama_kv_self_clear(self.ctx)
        prompt, one = ffi.new("llama_token[]", ids), ffi.new("llama_token[1]")
        if lib.llama_decode(self.ctx, lib.llama_batch_get_one(prompt, len(ids))):
            raise RuntimeError("llama_decode failed on the prompt")
        tokens = []
        while True:
            tokens.append(lib.llama_sampler_sample(self.sampler, self.ctx, -1))
            if len(tokens) == new_tokens or tokens[-1] in stop_ids:
                return tokens
            one[0] = tokens[-1]
            if lib.llama_decode(self.ctx, lib.llama_batch_get_one(one, 1)):
                raise RuntimeError("llama_decode failed")

    def close(self) -> None:
        self.lib.llama_sampler_free(self.sampler)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _decode_once(model, ids: torch.Tensor, decoder: str, new_tokens: int) -> tuple[float, list[int]]:
    """Tokens per second of one greedy call (prefill included) and the new tokens it chose."""
    from speechllm.generation import GenerationOptions, generate

    with torch.no_grad():
        t0 = time.perf_counter()
        if decoder == "llama.cpp":
            tokens = model.generate(ids[0].tolist(), new_tokens)
            return len(tokens) / (time.perf_counter() - t0), tokens
        if decoder == "hf":
            out = model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            return new_tokens / (time.perf_counter() - t0), out[0, ids.shape[1]:].tolist()
        options = GenerationOptions(max_new_tokens=new_tokens, eos_token_id=-1, stop_repetition=False,
                                    speculative=decoder == "speculative")
        r = generate(model, ids, options)
        return len(r.tokens) / (time.perf_counter() - t0), r.tokens


def copy_gb_s(mb: int = 256, repeats: int = 5) -> float:
    """Memory copy bandwidth (bytes read + written per second) of a ``mb`` MB tensor, best of ``repeats``."""
    src = torch.ones(mb * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def read_bytes_per_token(model) -> int:
    """Bytes of the matrices one decode step reads: linear layers (quantized codes + scales, or float
    weights) and the output layer, each storage once; the embedding table reads one row only."""
    from torch import nn

    from speechllm.quant import QuantLinear

    seen, total, held = set(), 0, []
    for module in model.modules():
        if isinstance(module, QuantLinear):
            tensors = [t for t in (module.qweight.codes, module.scale, module.offset) if t is not None]
        elif isinstance(module, nn.Linear):
            tensors = [module.weight]
        else:
            continue
        held += tensors  # a compacted layer's codes are rebuilt per call: alive, their memory is not reused
        for t in tensors:
            if t.untyped_storage().data_ptr() not in seen:
                seen.add(t.untyped_storage().data_ptr())
                total += t.numel() * t.element_size()
    return total


def _same_prefix(a: list[int], b: list[int]) -> int:
    """How many leading tokens two continuations share."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def bench_model(model_name: str, new_tokens: int, repeats: int) -> list[dict]:
    """Load the fp32, int8 and int4 variants (and the GGUF into llama.cpp where there is one and
    llama-cpp-cffi is installed), then time every path in turn, ``repeats`` rounds."""
    from speechllm.quant.model import weight_bytes

    loaded, paths = {}, list(PATHS)
    for weights in ("fp32", "int8", "int4"):
        before = _rss_mb()
        model, ids = MODELS[model_name](weights)
        loaded[weights] = (model, ids, weight_bytes(model) / 2**20, _rss_mb() - before,
                           read_bytes_per_token(model))
    binding = llama_cpp_binding() if model_name in GGUF_MODELS else None
    if isinstance(binding, tuple):
        gguf, ids = zoo_gguf(), loaded["int4"][1]
        before = _rss_mb()
        llm = LlamaCpp(binding, gguf, torch.get_num_threads(), ids.shape[1] + new_tokens + 8)
        loaded[LLAMA_CPP[0]] = (llm, ids, llm.weight_bytes() / 2**20, _rss_mb() - before,
                                gguf_read_bytes_per_token(gguf))
        paths.append(LLAMA_CPP)
    best, tokens = dict.fromkeys(paths, 0.0), {}
    for round_ in range(repeats + 1):  # round 0 warms up
        for weights, decoder in paths:
            model, ids = loaded[weights][:2]
            rate, tokens[weights, decoder] = _decode_once(model, ids, decoder, new_tokens)
            if round_:
                best[weights, decoder] = max(best[weights, decoder], rate)
    if LLAMA_CPP in paths:
        loaded[LLAMA_CPP[0]][0].close()
    copy = copy_gb_s()
    return [{"model": model_name, "weights": w, "decoder": d, "tokens_per_s": best[w, d],
             "weight_mb": loaded[w][2], "rss_added_mb": loaded[w][3],
             "read_mb_per_token": loaded[w][4] / 2**20,
             "weight_gb_s": loaded[w][4] * best[w, d] / 1e9, "copy_gb_s": copy,
             "same_prefix_as_int4_engine": _same_prefix(tokens[w, d], tokens["int4", "engine"])}
            for w, d in paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (1 is steadier when other jobs share the CPU)")
    parser.add_argument("--one", metavar="MODEL", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write every row here (benchmarks/results/decode.json)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(bench_model(args.one, args.new_tokens, args.repeats)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{torch.backends.cpu.get_cpu_capability()}; {args.new_tokens} new tokens, "
          f"best of {args.repeats} interleaved rounds\n")
    print("| model | weights | decoder | tokens/s | vs HF fp32 | weight MB | vs fp32 weights "
          "| RSS added MB | weight GB/s (copy GB/s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    results, notes = [], []
    if "smollm2" in args.models and isinstance(reason := llama_cpp_binding(), str):
        notes.append(f"llama.cpp row skipped: {reason}")
    if "llama-1b" in args.models:
        notes.append("llama-1b has no GGUF: no llama.cpp row there")
    for model_name in args.models:  # one process per model, so one model's memory never meets another's
        cmd = [sys.executable, __file__, "--one", model_name, "--new-tokens", str(args.new_tokens),
               "--repeats", str(args.repeats), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"| {model_name} | failed: {out.stderr.strip()[-300:]} |")
            continue
        rows = json.loads(out.stdout.strip().splitlines()[-1])
        results += rows
        base = rows[0]
        for row in rows:
            label = LABELS[row["decoder"]]
            print(f"| {model_name} | {row['weights']} | {label} "
                  f"| {row['tokens_per_s']:.1f} | {row['tokens_per_s'] / base['tokens_per_s']:.2f}x "
                  f"| {row['weight_mb']:.0f} | {row['weight_mb'] / base['weight_mb']:.0%} "
                  f"| {row['rss_added_mb']:.0f} | {row['weight_gb_s']:.1f} ({row['copy_gb_s']:.1f}) |",
                  flush=True)
    for row in results:
        if row["decoder"] == "llama.cpp":
            print(f"\n{row['model']}: llama.cpp's greedy tokens share their first "
                  f"{row['same_prefix_as_int4_engine']} of {args.new_tokens} with the int4 engine's")
    for note in notes:
        print(f"\nnote: {note}")
    if args.json:
        meta = {"command": " ".join(["python benchmarks/decode.py", *sys.argv[1:]]),
                "torch": torch.__version__, "threads": args.threads, "load_average": os.getloadavg(),
                "new_tokens": args.new_tokens, "repeats": args.repeats}
        Path(args.json).write_text(json.dumps({**meta, "rows": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
