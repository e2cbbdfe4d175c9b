"""The hands-free chat's server side, one :class:`LiveSession` per browser tab.

The page streams its microphone in ~100 ms pieces; :meth:`LiveSession.hear` brings each to 16 kHz
and runs it through the tab's own :class:`~speechllm.apps.chat.turns.TurnDetector`. A finished turn
waits in the session until the page asks for its answer; the answer in progress holds a stop flag
that a barge-in (the user speaks while it is generated or still playing) or the Stop button sets.
Where the detector reports pauses (``TurnOptions.pause_ms``), the session hands each paused turn to
``prehear`` on a thread of its own, so the model can hear it while the detector waits to see whether
the pause ends the turn.

Bounded: a session takes pieces of at most ``MAX_PIECE_SECONDS`` at 8-192 kHz, keeps at most one
turn of ``max_seconds`` and the detector's own few frames;
:class:`LiveSessions` keeps at most ``limit`` sessions (the least recently heard is dropped).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

import numpy as np

from speechllm.apps.chat.turns import (
    SAMPLE_RATE,
    BargeIn,
    SpeechStarted,
    TurnDetector,
    TurnEnded,
    TurnEvent,
    TurnOptions,
    TurnPaused,
)

MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_PIECE_SECONDS = 5.0  # the page sends ~0.1 s pieces; a longer one is not from its microphone


def to_float(samples: np.ndarray) -> np.ndarray:
    """Browser PCM (int16, or float) as float32 mono."""
    samples = np.asarray(samples)
    if samples.ndim == 2:
        samples = samples.mean(axis=1)
    if samples.dtype.kind in "iu":
        scale = float(np.iinfo(samples.dtype).max) + 1
        return (samples.astype(np.float32) / scale).reshape(-1)
    return samples.astype(np.float32).reshape(-1)


class LiveSession:
    """One tab's microphone stream, its finished turn waiting for an answer, the answer in progress."""

    def __init__(self, options: TurnOptions, detector: TurnDetector | None = None,
                 prehear: Callable[[np.ndarray], object] | None = None):
        self.options, self._detector, self.prehear = options, detector, prehear
        self._lock = threading.Lock()
        self._rate: int | None = None
        self._resampler = None
        self._waiting: TurnEnded | None = None
        self._stop: threading.Event | None = None  # the answer in progress (None: none)
        self._playing_until = 0.0  # monotonic time the answer's audio sent so far ends playing
        self.onsets = 0  # speech onsets heard (the page stops its player on each)
        self.turns = 0  # turns finished

    @property
    def detector(self) -> TurnDetector:
        """Made (the VAD loaded) when the tab first streams its microphone, not for push-to-send."""
        if self._detector is None:
            self._detector = TurnDetector(options=self.options)
        return self._detector

    def hear(self, rate: int, samples: np.ndarray) -> list[TurnEvent]:
        """A piece of the microphone stream; a barge-in stops the answer in progress."""
        if not MIN_RATE <= int(rate) <= MAX_RATE:
            raise ValueError(f"the microphone stream: {rate} Hz is not a sample rate between "
                             f"{MIN_RATE} and {MAX_RATE}")
        if len(samples) > MAX_PIECE_SECONDS * rate:
            raise ValueError(f"the microphone stream: a piece of {len(samples) / rate:.1f} s is over the "
                             f"limit of {MAX_PIECE_SECONDS:g} s")
        audio = self._resample(int(rate), to_float(samples))
        with self._lock:
            self.detector.answering = self._stop is not None or time.monotonic() < self._playing_until
            events = self.detector.push(audio)
            for event in events:
                if isinstance(event, (SpeechStarted, BargeIn)):
                    self.onsets += 1
                if isinstance(event, BargeIn):
                    self._stop_answer()
                elif isinstance(event, TurnEnded):
                    self._waiting, self.turns = event, self.turns + 1
        for event in events:
            if isinstance(event, TurnPaused) and self.prehear is not None:
                threading.Thread(target=self._prehear, args=(event.audio,), name="speechllm-prehear",
                                 daemon=True).start()
        return events

    def _prehear(self, audio: np.ndarray) -> None:
        try:
            self.prehear(audio)
        except Exception:  # hearing ahead only saves time: the answer hears the turn itself
            pass

    def _resample(self, rate: int, audio: np.ndarray) -> np.ndarray:
        import soxr

        if rate == SAMPLE_RATE:
            return audio
        if rate != self._rate:  # a new stream (or a new device): start the filter afresh
            self._rate, self._resampler = rate, soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
        return self._resampler.resample_chunk(audio)

    def take_turn(self) -> TurnEnded | None:
        """The finished turn waiting for its answer (once)."""
        with self._lock:
            turn, self._waiting = self._waiting, None
            return turn

    def begin_answer(self) -> threading.Event:
        """A new answer starts (an earlier one still running is stopped); its stop flag."""
        with self._lock:
            self._stop_answer()
            self._stop = threading.Event()
            return self._stop

    def playing(self, seconds: float) -> None:
        """``seconds`` more of the answer's audio went to the page (it plays after what was sent)."""
        with self._lock:
            self._playing_until = max(time.monotonic(), self._playing_until) + seconds

    def end_answer(self, stop: threading.Event) -> None:
        with self._lock:
            if self._stop is stop:
                self._stop = None

    def stop_answer(self) -> bool:
        """Stop the answer in progress (the Stop button); whether one was running."""
        with self._lock:
            return self._stop_answer()

    def _stop_answer(self) -> bool:
        running, self._playing_until = self._stop is not None, 0.0
        if self._stop is not None:
            self._stop.set()
            self._stop = None
        return running


class LiveSessions:
    """The sessions by key (Gradio's session hash), at most ``limit``; the least recently used goes."""

    def __init__(self, make: Callable[[], LiveSession], limit: int = 32):
        self.make, self.limit = make, limit
        self._sessions: OrderedDict[str, LiveSession] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> LiveSession:
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
            session = self._sessions.setdefault(key, self.make())
            while len(self._sessions) > self.limit:
                self._sessions.popitem(last=False)
            return session

    def find(self, key: str) -> LiveSession | None:
        with self._lock:
            return self._sessions.get(key)

    def drop(self, key: str) -> None:
        with self._lock:
            self._sessions.pop(key, None)

    def __len__(self) -> int:
        return len(self._sessions)
