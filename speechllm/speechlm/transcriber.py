"""Batch speech → text with a speech-LLM, on the same protocol as the Whisper baseline.

:class:`SpeechLLMTranscriber` reuses :class:`speechllm.transcriber.WhisperTranscriber`'s
``transcribe`` / ``transcribe_many`` (long audio cut into ≤ 30 s segments by its segmenter,
VAD or fixed cuts; segments of several files decoded in one batch; bad files reported, not
fatal) and replaces only how a batch of segments becomes text. The same class translates or answers when
given another task, e.g. ``SpeechLLMTranscriber(dir, task="translate")``.

A transcript or a translation follows the audio segment by segment. A question or an instruction is
about the whole recording: a model that hears through Whisper (which cuts its own 30 s windows) hears
up to :data:`WHOLE_RECORDING_SECONDS` at once and answers once; a longer recording is answered in
pieces that long, and a model that hears through its adapter answers each ≤ 30 s segment. Where a
question about a recording is answered in pieces, the recording's answer is what the pieces answered:
a piece that does not say is left out, and only where none says is the answer the refusal.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from speechllm.device import pick_device
from speechllm.speechlm.generate import GenerationOptions
from speechllm.speechlm.model import SpeechLLM, instruction, language_name
from speechllm.speechlm.tasks import NOT_STATED, TASKS, answer_correct
from speechllm.transcriber import SegmentText, Transcript, WhisperTranscriber, make_segmenter

# tasks whose reply says what the audio says (in some language): their length follows the audio's
TASKS_BOUND_TO_AUDIO = ("transcribe", "translate")
TOKENS_PER_SECOND, TOKENS_MIN = 8.0, 24  # the budget: ~3x speech's token rate, and a floor
WHOLE_RECORDING_SECONDS = 600.0  # heard at once for a question (~2,000 LLM tokens of transcript)


class SpeechLLMTranscriber(WhisperTranscriber):
    def __init__(self, model: str | SpeechLLM, device: str | None = None, beam_size: int = 1,
                 batch_size: int = 8, task: str = "transcribe", prompt: str | None = None,
                 target: str = "English", max_new_tokens: int = 200, segmenter: str = "auto",
                 language: str | None = None, quote_answers: bool = True):
        if isinstance(model, SpeechLLM):
            self.model = model
            self.device = model.device
        else:
            from speechllm.speechlm.io import load_speechlm

            self.device = pick_device(device)
            self.model = load_speechlm(model, device=self.device)
        self.model.eval()
        limit = getattr(self.model, "max_seconds", None) or self.model.encoder.max_seconds
        if task not in TASKS_BOUND_TO_AUDIO and getattr(self.model, "whisper", None) is not None:
            limit = WHOLE_RECORDING_SECONDS
        self.max_segment_seconds = limit if limit is not None else 30.0
        if language is not None:  # the audio's language, told to the Whisper that hears the task
            self.model.hear_in(language.strip().lower(), task)
        self.instruction = instruction(task, prompt, language_name(target))
        self.bound_to_audio = task in TASKS_BOUND_TO_AUDIO
        self.quotes_audio = TASKS[task].quotes_audio
        self.options = GenerationOptions(max_new_tokens=max_new_tokens, beam_size=beam_size,
                                         quote_answers=quote_answers)
        self.batch_size = max(1, batch_size)
        self.segmenter = make_segmenter(segmenter)

    def decode_segments(self, segments: list[np.ndarray]) -> list[SegmentText]:
        options = self.options
        if self.bound_to_audio:  # a transcript or translation cannot run on far beyond what was said
            seconds = max(len(s) for s in segments) / 16000
            budget = max(TOKENS_MIN, int(TOKENS_PER_SECOND * seconds))
            options = replace(options, max_new_tokens=min(options.max_new_tokens, budget))
        results = self.model.generate(segments, [self.instruction] * len(segments), options)
        return [(r.text, r.stop) for r in results]

    def _assemble(self, parts, duration: float) -> Transcript:
        transcript = super()._assemble(parts, duration)
        return answer_of_pieces(transcript) if self.quotes_audio else transcript


def answer_of_pieces(transcript: Transcript) -> Transcript:
    """A recording's answer from its pieces' answers: those that say something, in order; the refusal
    only where no piece says (each piece's own answer stays in its segment)."""
    if len(transcript.segments) < 2:
        return transcript
    said = [s.text for s in transcript.segments if s.text and not answer_correct(NOT_STATED, s.text)]
    return replace(transcript, text=" ".join(said) if said else NOT_STATED)
