"""Whisper's byte-level BPE tokenizer and special tokens, over Hugging Face ``tokenizers``.

Reads ``tokenizer.json``, or ``vocab.json`` + ``merges.txt`` (+ ``added_tokens.json``) from a
model folder. Whether the model is multilingual comes from the model (its vocabulary size),
not from the tokenizer: English-only checkpoints ship the language tokens too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers


def _load_tokenizers(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if not (vocab.is_file() and merges.is_file()):
        raise FileNotFoundError(f"{folder}: no tokenizer.json nor vocab.json + merges.txt")
    tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    added = folder / "added_tokens.json"
    if added.is_file():
        by_id = sorted((i, t) for t, i in json.loads(added.read_text()).items())
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for _, t in by_id])
        wrong = [(t, i) for i, t in by_id if tok.token_to_id(t) != i]
        if wrong:
            raise ValueError(f"{added}: added tokens do not follow the vocabulary, e.g. {wrong[0]}")
    return tok


class WhisperTokenizer:
    """Text <-> ids plus Whisper's special tokens (sot, eot, tasks, languages, timestamps)."""

    def __init__(self, tokenizer: Tokenizer, multilingual: bool,
                 suppress_tokens: Iterable[int] = (), begin_suppress_tokens: Iterable[int] = ()):
        self.tokenizer = tokenizer
        self.multilingual = multilingual
        self.eot = self._special("<|endoftext|>")
        self.sot = self._special("<|startoftranscript|>")
        self.translate = self._special("<|translate|>")
        self.transcribe = self._special("<|transcribe|>")
        self.sot_prev = self._special("<|startofprev|>")
        self.no_speech = self._special("<|nospeech|>", "<|nocaptions|>")
        self.no_timestamps = self._special("<|notimestamps|>")
        self.timestamp_begin = self.no_timestamps + 1
        self.languages: dict[str, int] = {}
        for i in range(self.sot + 1, self.translate):
            token = tokenizer.id_to_token(i)
            if token and token.startswith("<|") and token.endswith("|>"):
                self.languages[token[2:-2]] = i
        # tokens a transcript must never hold (from the model's config); the decoder uses them
        self.suppress_tokens = tuple(suppress_tokens)
        self.begin_suppress_tokens = tuple(begin_suppress_tokens) or (*self.encode(" "), self.eot)

    @classmethod
    def from_folder(cls, folder: str | Path, multilingual: bool, **kwargs) -> WhisperTokenizer:
        return cls(_load_tokenizers(Path(folder)), multilingual, **kwargs)

    def _special(self, *names: str) -> int:
        for name in names:
            i = self.tokenizer.token_to_id(name)
            if i is not None:
                return i
        raise ValueError(f"tokenizer has no {' / '.join(names)} token; is it a Whisper tokenizer?")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids, skipping every special and timestamp token."""
        return self.tokenizer.decode([int(i) for i in ids if i < self.eot], skip_special_tokens=True)

    def sot_sequence(self, language: str | None = None, task: str = "transcribe",
                     timestamps: bool = False) -> tuple[int, ...]:
        """Decoder prompt: ``<|startoftranscript|>[<|lang|><|task|>][<|notimestamps|>]``."""
        ids = [self.sot]
        if self.multilingual:
            language = language or "en"
            if language not in self.languages:
                raise ValueError(f"unknown language {language!r}; known: {', '.join(self.languages)}")
            if task not in ("transcribe", "translate"):
                raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
            ids += [self.languages[language], self.transcribe if task == "transcribe" else self.translate]
        elif language not in (None, "en") or task != "transcribe":
            raise ValueError("this model is English-only: it transcribes English and nothing else")
        if not timestamps:
            ids.append(self.no_timestamps)
        return tuple(ids)
