"""The project's own Whisper: variable-length batched encoder, KV-cached decoder, beam search.

>>> model, tokenizer = load_whisper(folder)            # Hugging Face or CTranslate2 folder
>>> results = decode(model, tokenizer, mel, mel_lengths, DecodingOptions(beam_size=5))
"""

from speechllm.whisper.decoding import (
    BeamSearchDecoder,
    DecodingOptions,
    DecodingResult,
    GreedyDecoder,
    LogitFilter,
    SuppressBlank,
    SuppressTokens,
    TokenDecoder,
    decode,
    pad_mel_to_30s,
)
from speechllm.whisper.model import AudioEncoder, KVCache, TextDecoder, Whisper, WhisperConfig
from speechllm.whisper.tokenizer import WhisperTokenizer
from speechllm.whisper.weights import FORMATS, detect_format, load_whisper, whisper_from_hf_state_dict

__all__ = [
    "FORMATS", "AudioEncoder", "BeamSearchDecoder", "DecodingOptions", "DecodingResult", "GreedyDecoder",
    "KVCache", "LogitFilter", "SuppressBlank", "SuppressTokens", "TextDecoder", "TokenDecoder", "Whisper",
    "WhisperConfig", "WhisperTokenizer", "decode", "detect_format", "load_whisper", "pad_mel_to_30s",
    "whisper_from_hf_state_dict",
]
