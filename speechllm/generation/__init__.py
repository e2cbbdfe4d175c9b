"""One decoding engine under every path that generates tokens (ask, translate, chat, the CTC+LLM
beam scorer, benchmarks).

- :mod:`~speechllm.generation.options`: the one ``GenerationOptions``, ``Generation`` (why a reply
  ended), the repetition guard.
- :mod:`~speechllm.generation.engines`: which engine decodes a model, by ``model_type``: the static
  KV cache engine (:mod:`~speechllm.generation.static`, Llama family, low-bit kernels, fused
  projections) or the Hugging Face fallback (:mod:`~speechllm.generation.hf`).
- :mod:`~speechllm.generation.decoders`: greedy / sampling / beam search, token streaming, and
  speculative decoding from a suffix automaton (:mod:`~speechllm.generation.speculative`) and a
  trained draft head (:mod:`~speechllm.generation.draft_head`).
- :mod:`~speechllm.generation.scorer`: the LLM as the CTC prefix beam search's language model.

>>> state = open_state(llm, embeds, attention_mask, position_ids)   # prefill spliced embeddings
>>> run_decoder(state, stop_ids, GenerationOptions(max_new_tokens=64), prompt=prompt_ids)
>>> generate(llm, input_ids, GenerationOptions(max_new_tokens=64)).tokens   # from token ids
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from speechllm.generation.decoders import (
    DECODERS,
    BeamSearchDecoder,
    Decoded,
    DraftStats,
    GreedyDecoder,
    TokenChooser,
    greedy_steps,
    run_decoder,
    token_stream,
)
from speechllm.generation.draft_head import DraftHead, HeadDrafter
from speechllm.generation.engines import ENGINES, open_state, register_engine, state_class
from speechllm.generation.hf import HFState
from speechllm.generation.options import (
    STOP_REASONS,
    Generation,
    GenerationOptions,
    GenerationResult,
    RepetitionGuard,
    Reply,
    decode_text,
)
from speechllm.generation.scorer import LLMPrefixScorer
from speechllm.generation.speculative import PhraseBook, SamDrafter, SuffixAutomaton
from speechllm.generation.static import StaticState, engine_for

LMState = HFState  # the name the fallback state had (speechllm.speechlm.generate)

__all__ = [
    "DECODERS", "ENGINES", "STOP_REASONS", "BeamSearchDecoder", "Decoded", "DraftHead", "DraftStats",
    "Generation", "GenerationOptions", "GenerationResult", "GreedyDecoder", "HFState", "HeadDrafter",
    "LLMPrefixScorer", "LMState",
    "PhraseBook", "RepetitionGuard", "Reply", "SamDrafter", "StaticState", "SuffixAutomaton", "TokenChooser",
    "decode_text", "engine_for",
    "generate", "greedy_steps", "open_state", "register_engine", "run_decoder", "state_class",
    "token_stream",
]


def _stop_ids(model: nn.Module, options: GenerationOptions) -> tuple[int, ...]:
    eos = options.eos_token_id if options.eos_token_id is not None else model.config.eos_token_id
    return () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)


@torch.no_grad()
def generate(model: nn.Module, input_ids: Tensor,
             options: GenerationOptions | None = None) -> GenerationResult:
    """Continue one prompt of token ids (``[1, T]``) on the engine the registry picks for ``model``."""
    options = options or GenerationOptions()
    stops = _stop_ids(model, options)
    device = next(iter(model.get_input_embeddings().state_dict().values())).device
    ids = input_ids.reshape(1, -1).to(device)
    t0 = time.perf_counter()
    embeds = model.get_input_embeddings()(ids)
    mask = torch.ones_like(ids)
    positions = torch.arange(ids.shape[1], device=ids.device)[None]
    capacity = ids.shape[1] + options.max_new_tokens + options.draft_tokens + 1
    state = open_state(model, embeds, mask, positions, options.engine, capacity)
    t1 = time.perf_counter()
    decoder = DECODERS["greedy" if options.beam_size == 1 else "beam"](stops, options, ids[0].tolist())
    tokens, logprob, stop = decoder.run(state)[0]
    stats = getattr(decoder, "stats", DraftStats())
    score = decoder.score(logprob, len(tokens)) if options.beam_size > 1 else logprob
    return GenerationResult(tokens, stop == "end", t1 - t0, time.perf_counter() - t1, score, stop=stop,
                            drafted=stats.drafted, accepted=stats.accepted)
