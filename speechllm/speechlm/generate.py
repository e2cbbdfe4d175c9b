"""Moved: decoding lives in :mod:`speechllm.generation` (one engine, one ``GenerationOptions``).
The names this module had are re-exported so old imports keep working."""

from speechllm.generation import (  # noqa: F401
    STOP_REASONS,
    BeamSearchDecoder,
    Decoded,
    Generation,
    GenerationOptions,
    GreedyDecoder,
    LMState,
    RepetitionGuard,
    decode_text,
    greedy_steps,
    run_decoder,
)
