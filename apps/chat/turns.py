"""Turn-taking for the hands-free chat: who is speaking, when a turn ends, when the user barges in.

:class:`TurnDetector` takes 16 kHz microphone audio in pieces of any size and, with a voice activity
detector (Silero VAD by default, any callable giving one speech probability per 512-sample frame),
runs a small state machine per 32 ms frame:

* **silence → speech**: ``onset_ms`` of speech in a row: :class:`SpeechStarted` (its time is the
  first of those frames). ``pre_roll_ms`` of audio before it is kept, so the turn starts whole.
* **speech → end of turn**: ``end_ms`` of silence in a row after speech: :class:`TurnEnded` with the
  turn's audio (pre-roll, speech, a little trailing silence). A turn with less than ``min_speech_ms``
  of speech in all (a cough, a click) ends as :class:`TurnDropped`. A turn that reaches
  ``max_seconds`` ends there.
* **a pause** (with ``pause_ms``): ``pause_ms`` of silence in a row, less than ``end_ms``, in a turn
  with enough speech: :class:`TurnPaused` with the turn's audio so far, which is what
  :class:`TurnEnded` will carry if the pause becomes the end (its trailing silence is then cut to
  ``pause_ms``). A caller can start hearing the turn there, while the detector waits out the rest of
  ``end_ms``.
* **barge-in**: while an answer is playing (:meth:`TurnDetector.answering`), a speech onset is a
  :class:`BargeIn`: the caller stops the answer's audio and its generation; the user's turn goes on.

Times are seconds of microphone audio since the detector started (or was reset). Nothing here knows
about browsers or models.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

SAMPLE_RATE = 16_000
FRAME = 512  # samples per VAD decision (32 ms), as speechllm.vad.SileroVAD takes them


@dataclass(frozen=True)
class TurnOptions:
    threshold: float = 0.5  # speech probability above which a frame is speech
    onset_ms: float = 64  # speech in a row that starts a turn (and barges in)
    end_ms: float = 600  # silence in a row that ends a turn
    pre_roll_ms: float = 200  # audio kept from before the onset
    min_speech_ms: float = 200  # a turn with less speech than this is dropped
    max_seconds: float = 30.0  # a turn ends here even if the user goes on
    pause_ms: float | None = None  # silence that sends the turn so far ahead as TurnPaused (None: never)

    def __post_init__(self):
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold is {self.threshold:g}: it must be between 0 and 1")
        for name in ("onset_ms", "end_ms", "max_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} is {getattr(self, name):g}: it must be above 0")
        if self.pause_ms is not None and not 0 < self.pause_ms <= self.end_ms:
            raise ValueError(f"pause_ms is {self.pause_ms:g}: it must be above 0 and at most end_ms")

    def frames(self, ms: float) -> int:
        return max(1, round(ms * SAMPLE_RATE / 1000 / FRAME))


@dataclass(frozen=True)
class SpeechStarted:
    at: float  # seconds: the first speech frame of the onset


@dataclass(frozen=True)
class BargeIn:
    at: float  # a speech onset while an answer was playing


@dataclass(frozen=True)
class TurnEnded:
    audio: np.ndarray  # float32, 16 kHz: pre-roll, the turn, up to end_ms of trailing silence
    start: float  # seconds: speech onset
    end: float  # seconds: the last speech frame's end


@dataclass(frozen=True)
class TurnPaused:
    audio: np.ndarray  # the turn so far: what TurnEnded carries if no speech follows
    start: float
    end: float


@dataclass(frozen=True)
class TurnDropped:
    start: float
    end: float  # too little speech to be a turn


TurnEvent = SpeechStarted | BargeIn | TurnPaused | TurnEnded | TurnDropped


def silero_probabilities() -> Callable[[np.ndarray], np.ndarray]:
    """One Silero VAD (its own recurrent state), as the detector's ``vad``."""
    from speechllm.vad import SileroVAD

    return SileroVAD()


class TurnDetector:
    """The turn-taking state machine over one microphone stream (see the module's description)."""

    def __init__(self, vad: Callable[[np.ndarray], np.ndarray] | None = None,
                 options: TurnOptions = TurnOptions()):
        self.vad = vad if vad is not None else silero_probabilities()
        self.options = options
        self._onset, self._end = options.frames(options.onset_ms), options.frames(options.end_ms)
        self._pre_roll = round(options.pre_roll_ms * SAMPLE_RATE / 1000 / FRAME)
        self._min_speech = options.frames(options.min_speech_ms)
        self._pause = options.frames(options.pause_ms) if options.pause_ms is not None else None
        self._max_frames = max(1, int(options.max_seconds * SAMPLE_RATE) // FRAME)  # never over it
        self.answering = False  # an answer is playing: an onset is a barge-in
        self.reset()

    def reset(self) -> None:
        if hasattr(self.vad, "reset"):
            self.vad.reset()
        self._rest = np.zeros(0, dtype=np.float32)
        self._frames = 0  # frames seen in all
        self._recent: list[np.ndarray] = []  # silence and onset frames not yet in a turn
        self._run = 0  # speech frames in a row (while silent) or silent frames in a row (in a turn)
        self._turn: list[np.ndarray] | None = None  # frames of the turn in progress
        self._turn_start = 0  # frame index of its onset
        self._speech = 0  # speech frames in the turn
        self._last_speech = 0  # frame index after the turn's last speech frame
        self._kept = 0  # frames of the turn up to its last speech frame

    @property
    def in_turn(self) -> bool:
        return self._turn is not None

    def seconds(self, frames: int) -> float:
        return frames * FRAME / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> list[TurnEvent]:
        """Feed 16 kHz float audio; the events it completes, in order."""
        audio = np.concatenate([self._rest, np.asarray(samples, dtype=np.float32).reshape(-1)])
        n = len(audio) // FRAME
        self._rest = audio[n * FRAME:]
        if n == 0:
            return []
        probs = np.asarray(self.vad(audio[: n * FRAME]), dtype=np.float32).reshape(-1)
        if len(probs) != n:
            raise ValueError(f"the VAD gave {len(probs)} probabilities for {n} frames")
        events: list[TurnEvent] = []
        for i in range(n):
            frame = audio[i * FRAME:(i + 1) * FRAME]
            event = self._step(frame, bool(probs[i] > self.options.threshold))
            self._frames += 1
            if event is not None:
                events.append(event)
        return events

    def _step(self, frame: np.ndarray, speech: bool) -> TurnEvent | None:
        if self._turn is None:
            return self._step_silent(frame, speech)
        self._turn.append(frame)
        if speech:
            self._run, self._speech, self._last_speech = 0, self._speech + 1, self._frames + 1
            self._kept = len(self._turn)
        else:
            self._run += 1
        if self._run >= self._end or len(self._turn) >= self._max_frames:
            return self._close()
        if self._run == self._pause and self._speech >= self._min_speech:
            start, end = self.seconds(self._turn_start), self.seconds(self._last_speech)
            return TurnPaused(np.concatenate(self._turn), start, end)
        return None

    def _step_silent(self, frame: np.ndarray, speech: bool) -> TurnEvent | None:
        self._recent.append(frame)
        self._run = self._run + 1 if speech else 0
        if self._run < self._onset:
            del self._recent[: max(0, len(self._recent) - self._pre_roll - self._onset)]
            return None
        start = self._frames + 1 - self._onset
        kept = self._pre_roll + self._onset
        self._turn, self._recent = self._recent[-kept:], []
        self._turn_start, self._speech, self._last_speech, self._run = start, self._onset, self._frames + 1, 0
        self._kept = len(self._turn)
        if self.answering:
            self.answering = False
            return BargeIn(self.seconds(start))
        return SpeechStarted(self.seconds(start))

    def _close(self) -> TurnEvent:
        frames, self._turn = self._turn, None
        start, end = self.seconds(self._turn_start), self.seconds(self._last_speech)
        self._run = 0
        if self._speech < self._min_speech:
            return TurnDropped(start, end)
        if self._pause is not None:  # the audio a pause sent ahead: its trailing silence cut there
            frames = frames[: self._kept + self._pause]
        return TurnEnded(np.concatenate(frames), start, end)
