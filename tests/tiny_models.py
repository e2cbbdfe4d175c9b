"""Tiny random models the tests build: a Whisper folder and a chat LLM folder, offline in ms.

Both are written in Hugging Face layout, so they load by path exactly like the real ones
(``load_encoder(folder)``, ``load_backbone(folder)``) and a saved speech-LLM can name them.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_CORPUS = [
    "transcribe the speech", "translate the speech into english", "answer the question asked in the speech",
    "hello world", "the weather will be sunny tomorrow", "what is the capital of france", "paris",
    "a quick brown fox jumps over the lazy dog", "tone noise beep one two three",
]


def make_tiny_whisper(folder: str | Path, d_model: int = 32, layers: int = 1, seed: int = 0) -> Path:
    """A random Whisper in Hugging Face layout (config, safetensors, byte-level BPE files)."""
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = transformers.WhisperConfig(
        vocab_size=64, num_mel_bins=80, d_model=d_model, encoder_layers=layers, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=32,
        pad_token_id=50, bos_token_id=50, eos_token_id=50, decoder_start_token_id=51)
    transformers.WhisperForConditionalGeneration(config).save_pretrained(folder)
    pieces = list("abcdefghijklmnopqrstuvwxyz.,'?Ġ") + [f"x{i}" for i in range(19)]
    vocab = {p: i for i, p in enumerate(pieces)} | {"<|endoftext|>": 50}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    specials = ["<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>", "<|startoflm|>",
                "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>"]
    (folder / "added_tokens.json").write_text(json.dumps({t: 51 + i for i, t in enumerate(specials)}))
    return folder


def make_tiny_llm(folder: str | Path, hidden: int = 32, layers: int = 2, seed: int = 0,
                  init_std: float = 0.2) -> Path:
    """A random Llama with a byte-level BPE tokenizer and a ChatML chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|im_end|>",
                                        bos_token="<|im_start|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True, initializer_range=init_std,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder
