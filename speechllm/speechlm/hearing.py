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

A translation memory in the model's config (``"memory": {"Spanish-English": FILE}``, see
:class:`~speechllm.speechlm.model.SpeechLLMConfig`) makes a Whisper hear twice where its first
transcript comes close to a sentence of the memory's source side (:meth:`WhisperHearing.prompt_for`):
the nearest sentence is its prompt for the second hearing, and brings that text's names, spelling and
register with it. Everyday sentences rarely come close to a Bible verse and are heard once.

``"hearing_decoder"`` names a file of the model folder holding that Whisper's decoder fine-tuned on the
user's recordings (``speechllm finetune`` on a Whisper-hearing base), loaded over the checkpoint's.

A Whisper remembers its last few clips' first transcripts (by the clip's samples and its options): a
chat's spoken turn is heard once for its answer and its place in the history, a clip asked several
things in a row once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from speechllm.adapters import AdapterOutput
from speechllm.speechlm.simulated_units import exact_units, simulated_output
from speechllm.text_normalize import spoken_form

HEARINGS = ("adapter", "whisper")


class WhisperHearing:
    """Whisper's transcripts of clips, and the LLM input they make."""

    remembered = 8  # clips whose transcripts are kept

    def __init__(self, name: str, device: torch.device | str = "cpu", languages: Sequence[str] = ()) -> None:
        from speechllm.transcriber import WhisperTranscriber

        self.asr = WhisperTranscriber(name, device=str(device), segmenter="fixed", detect_among=languages)
        # a first hearing -> the prompt to hear the clip again with (None: heard once)
        self.prompt_for: Callable[[Heard], str | None] = lambda heard: None
        self._recent: OrderedDict[tuple, Heard] = OrderedDict()
        self._lock = threading.Lock()  # one clip at a time (a chat hears a turn ahead on another thread)

    def set_language(self, language: str) -> None:
        """Transcribe in ``language`` from now on (a clear error for an English-only Whisper)."""
        self.asr.options = replace(self.asr.options, language=self.asr.check_language(language))

    def encoder(self):
        """Whisper's encoder as the speech-LLM's (frozen) encoder: one copy of its weights."""
        from speechllm.speechlm.backbone import WhisperEncoder

        model = self.asr.model
        return WhisperEncoder(model.encoder, model.config.n_mels).eval().requires_grad_(False)

    def heard(self, audio: Sequence[np.ndarray]) -> list[Heard]:
        """What Whisper writes for each 16 kHz clip (any length: it cuts its own 30 s windows), and in
        which language (detected by a multilingual Whisper; English for an English-only one)."""
        with self._lock:
            model = self.asr.model
            device = next(model.encoder.parameters()).device
            if model.device != device:  # the speech-LLM moved the encoder it shares: the decoder follows
                model.to(device)
            return self._heard(audio)

    def load_decoder(self, path) -> None:
        """A fine-tuned decoder (``speechllm.whisper.finetune.decoder_weights``, saved in ``path``) in
        place of the checkpoint's; remembered transcripts are dropped."""
        from speechllm.files import load_tensors
        from speechllm.whisper.finetune import load_decoder_weights

        with self._lock:
            load_decoder_weights(self.asr.model, load_tensors(path), str(path))
            self._recent.clear()

    def forget(self) -> None:
        """Drop the remembered transcripts (e.g. to time a hearing)."""
        with self._lock:
            self._recent.clear()

    def _heard(self, audio: Sequence[np.ndarray]) -> list[Heard]:
        out = []
        for clip in audio:
            clip = np.ascontiguousarray(clip, np.float32)
            heard = self._first_hearing(clip)
            prompt = self.prompt_for(heard)
            if prompt is not None:
                heard = Heard(self._transcribe_prompted(clip, heard.language, prompt), heard.language)
            out.append(heard)
        return out

    def _first_hearing(self, clip: np.ndarray) -> Heard:
        """Whisper's transcript of ``clip`` with its options, remembered for the last few clips."""
        key = (hashlib.blake2b(clip.tobytes(), digest_size=16).digest(), self.asr.options)
        heard = self._recent.pop(key, None)
        if heard is None:
            result = self.asr.transcribe(clip)
            heard = Heard(result.text.strip(), getattr(result, "language", None) or "en")
        self._recent[key] = heard  # the newest last
        while len(self._recent) > self.remembered:
            self._recent.popitem(last=False)
        return heard

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
    out = simulated_output(adapter, [exact_units(u) for u in units])
    tokens = torch.zeros(out.mask.shape, dtype=torch.long, device=out.mask.device)
    for row, item in enumerate(units):
        llm_ids = [vocab.subset[u - 1] if vocab.subset else u - 1 for u in item]
        tokens[row, : len(llm_ids)] = torch.tensor(llm_ids, dtype=torch.long)
    return AdapterOutput(out.embeddings, out.mask, None, tokens)
