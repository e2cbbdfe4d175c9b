"""How a speech-LLM hears: its adapter's CTC units, or its encoder's own Whisper decoder.

``"hearing": "adapter"`` (default): the adapter turns the encoder's frames into the LLM's input.
``"hearing": "whisper"``: the Whisper checkpoint the encoder comes from (``config.encoder``, e.g.
whisper-tiny.en) decodes each clip the way Whisper does (its 30 s window, its own decoder), and its
transcript reaches the LLM as *clean units* of the ``ctc-posterior`` adapter's vocabulary: what that
adapter would hand the LLM for a perfect CTC path, the clean end of the simulated units its LoRA
learned from (:mod:`speechllm.speechlm.simulated_units`). The transcribe instruction is answered with
Whisper's transcript itself. The adapter's CTC head is not used; its vocabulary and embedding mix are.

``"hearing_models"`` names another Whisper for some tasks, e.g. ``{"translate": "whisper-base"}``: speech
to translate is rarely English, and an English-only Whisper would write it as English-sounding words.
Such a Whisper is loaded on the first clip of its task, so the other tasks never pay for it;
``"hearing_languages"`` limits its language detection to the languages the model learned (a clip of
synthetic Spanish is otherwise sometimes "heard" as Thai or Italian).

``"hearing_memory"`` (language -> a translation memory file in the model folder) makes a Whisper hear
twice where its first transcript is close to a sentence of the memory's source side (shares words of
``hearing_memory_min_score`` idf at least, :mod:`~speechllm.speechlm.memory`): the nearest sentence is
its prompt for the second hearing, and brings that text's names, spelling and register with it.
Measured on 50 held-out Bible verses in Spanish (benchmarks/results/translate.json): Whisper base
writes archaic verses the way modern Spanish spells them, and the starter, which learned
Reina-Valera's text, translated them at BLEU 6.3 from the first hearing and 10.0 from the second.
Everyday sentences rarely come close to a verse and are heard once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from speechllm.adapters import AdapterOutput
from speechllm.speechlm.memory import TranslationMemory
from speechllm.speechlm.simulated_units import simulated_output
from speechllm.text_normalize import spoken_form

HEARINGS = ("adapter", "whisper")


class WhisperHearing:
    """Whisper's transcripts of clips, and the LLM input they make."""

    def __init__(self, name: str, device: torch.device | str = "cpu", languages: Sequence[str] = ()) -> None:
        from speechllm.transcriber import WhisperTranscriber

        self.asr = WhisperTranscriber(name, device=str(device), segmenter="fixed", detect_among=languages)
        self.memory_files: dict[str, Path] = {}  # language -> translation memory (source side in it)
        self.memory_min_score = 15.0
        self._memories: dict[str, TranslationMemory] = {}  # read on the first clip heard in the language

    def prompt_from(self, files: Mapping[str, Path], min_score: float) -> WhisperHearing:
        """Hear a clip again, prompted by the nearest sentence of ``files[language]``, where the first
        transcript shares at least ``min_score`` with it (``hearing_memory``)."""
        self.memory_files, self.memory_min_score, self._memories = dict(files), min_score, {}
        return self

    def prompt_for(self, heard: Heard) -> str | None:
        """The memory sentence nearest a first hearing, when it is near enough (else None: heard once)."""
        file = self.memory_files.get(heard.language)
        if file is None or not heard.text:
            return None
        if heard.language not in self._memories:
            self._memories[heard.language] = TranslationMemory.read(file)
        nearest = self._memories[heard.language].nearest(heard.text, 1, self.memory_min_score)
        return nearest[0][0] if nearest else None

    def set_language(self, language: str) -> None:
        """Transcribe in ``language`` from now on (a clear error for an English-only Whisper)."""
        self.asr.options = replace(self.asr.options, language=self.asr.check_language(language))

    def encoder(self):
        """Whisper's encoder as the speech-LLM's (frozen) encoder: one copy of its weights."""
        from speechllm.speechlm.backbone import WhisperEncoder

        model = self.asr.model
        return WhisperEncoder(model.encoder, model.config.n_mels).eval().requires_grad_(False)

    def heard(self, audio: Sequence[np.ndarray]) -> list[Heard]:
        """What Whisper writes for each 16 kHz clip (at most one 30 s window each), and in which
        language (detected by a multilingual Whisper; English for an English-only one)."""
        model = self.asr.model
        device = next(model.encoder.parameters()).device
        if model.device != device:  # the speech-LLM moved the encoder it shares: the decoder follows
            model.to(device)
        out = []
        for clip in audio:
            clip = np.asarray(clip, np.float32)
            result = self.asr.transcribe(clip)
            heard = Heard(result.text.strip(), getattr(result, "language", None) or "en")
            prompt = self.prompt_for(heard)
            if prompt is not None:
                heard = Heard(self._transcribe_prompted(clip, heard.language, prompt), heard.language)
            out.append(heard)
        return out

    def _transcribe_prompted(self, clip: np.ndarray, language: str, prompt: str) -> str:
        options = self.asr.options
        self.asr.options = replace(options, language=language, initial_prompt=prompt)
        try:
            return self.asr.transcribe(clip).text.strip()
        finally:
            self.asr.options = options


@dataclass(frozen=True)
class Heard:
    text: str
    language: str  # a Whisper language code


def transcript_units(adapter, vocab, heard: Sequence[Heard]) -> AdapterOutput:
    """Transcripts as the adapter's output: one certain unit per vocabulary piece of the text in
    spoken form (English numbers as words, as the LoRA's text rows were), and, per position, the LLM
    token it stands for (``tokens``: the speculative drafter's seed)."""
    units = [vocab.encode(spoken_form(h.text, lang=h.language)) for h in heard]
    items = [(torch.tensor(u, dtype=torch.long).reshape(-1, 1), torch.ones(len(u), 1)) for u in units]
    out = simulated_output(adapter, items)
    tokens = torch.zeros(out.mask.shape, dtype=torch.long, device=out.mask.device)
    for row, item in enumerate(units):
        llm_ids = [vocab.subset[u - 1] if vocab.subset else u - 1 for u in item]
        tokens[row, : len(llm_ids)] = torch.tensor(llm_ids, dtype=torch.long)
    return AdapterOutput(out.embeddings, out.mask, None, tokens)
