"""The hands-free chat's turn-taking (apps/chat/turns.py), without a browser: the state machine on
scripted VAD probabilities (exact frame arithmetic), and Silero VAD on the repository's real speech
clips against silence, tones and noise."""

from pathlib import Path

import numpy as np
import pytest

from speechllm.apps.chat.turns import (
    FRAME,
    BargeIn,
    SpeechStarted,
    TurnDetector,
    TurnDropped,
    TurnEnded,
    TurnOptions,
    TurnPaused,
)
from speechllm.zoo import ZOO

SR = 16_000
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_silero = pytest.mark.skipif(ZOO["silero-vad"].bundle.folder() is None,
                                  reason="silero-vad not installed")


class ScriptedVAD:
    """Speech probability per frame from the audio itself: a frame whose first sample is 1 is speech."""

    def __call__(self, audio):
        return (audio.reshape(-1, FRAME)[:, 0] > 0.5).astype(np.float32)


def frames(pattern: str) -> np.ndarray:
    """'s' a speech frame, '.' a silent one."""
    return np.concatenate([np.full(FRAME, 1.0 if c == "s" else 0.0, np.float32) for c in pattern])


def run(detector, audio, piece):
    events = []
    for i in range(0, len(audio), piece):
        events += detector.push(audio[i:i + piece])
    return events


def test_state_machine_frame_by_frame():
    options = TurnOptions(onset_ms=64, end_ms=96, pre_roll_ms=64, min_speech_ms=128)  # 2, 3, 2, 4 frames
    detector = TurnDetector(ScriptedVAD(), options)
    t = FRAME / SR
    #        0123456789...
    audio = frames("....s.sss.ss....." + "..ss...." + "sssssss...")
    for piece in (FRAME, 333, 5000, len(audio)):  # any piece size gives the same events
        detector.reset()
        events = run(detector, audio, piece)
        assert [type(e) for e in events] == [SpeechStarted, TurnEnded, SpeechStarted, TurnDropped,
                                             SpeechStarted, TurnEnded]
        first = events[1]
        assert events[0].at == pytest.approx(6 * t) and first.start == pytest.approx(6 * t)
        assert first.end == pytest.approx(12 * t)  # one silent frame inside the turn does not end it
        # pre-roll (frames 4-5: 's.'), the turn 6..11, three silent frames that ended it
        assert len(first.audio) == (2 + 6 + 3) * FRAME
        assert np.array_equal(first.audio[::FRAME], frames("s.sss.ss...")[::FRAME])
        assert events[3] == TurnDropped(19 * t, 21 * t)  # two frames of speech: under min_speech
        assert events[4].at == pytest.approx(25 * t) and events[5].end == pytest.approx(32 * t)
        assert not detector.in_turn


def test_barge_in_while_an_answer_plays_then_the_turn_goes_on():
    detector = TurnDetector(ScriptedVAD(), TurnOptions(onset_ms=64, end_ms=96, pre_roll_ms=0,
                                                       min_speech_ms=64))
    events = detector.push(frames("..ss..."))
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded]
    detector.answering = True  # the answer is playing
    events = detector.push(frames(".....sss...."))
    assert [type(e) for e in events] == [BargeIn, TurnEnded]
    assert events[0].at == pytest.approx(12 * FRAME / SR) and not detector.answering
    assert [type(e) for e in detector.push(frames("..ss..."))] == [SpeechStarted, TurnEnded]


def test_a_turn_ends_at_max_seconds():
    detector = TurnDetector(ScriptedVAD(), TurnOptions(onset_ms=32, end_ms=500, pre_roll_ms=0,
                                                       max_seconds=FRAME * 10 / SR, min_speech_ms=32))
    events = detector.push(frames("s" * 25))
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded, SpeechStarted, TurnEnded, SpeechStarted]
    assert all(len(e.audio) == 10 * FRAME for e in events if isinstance(e, TurnEnded))


def test_a_pause_sends_the_turn_ahead_with_the_audio_its_end_will_carry():
    options = TurnOptions(onset_ms=64, end_ms=160, pre_roll_ms=0, min_speech_ms=96, pause_ms=64)  # 2 of 5
    detector = TurnDetector(ScriptedVAD(), options)
    events = detector.push(frames("..ssss......"))
    assert [type(e) for e in events] == [SpeechStarted, TurnPaused, TurnEnded]
    paused, ended = events[1], events[2]
    assert np.array_equal(paused.audio, ended.audio) and len(ended.audio) == (4 + 2) * FRAME  # 2 silent kept
    assert (paused.start, paused.end) == (ended.start, ended.end)
    # speech after a pause: each pause goes ahead; the end carries the last one's audio
    events = detector.push(frames("..sss...ss......"))
    assert [type(e) for e in events] == [SpeechStarted, TurnPaused, TurnPaused, TurnEnded]
    assert np.array_equal(events[2].audio, events[3].audio)
    assert len(events[3].audio) == (3 + 3 + 2 + 2) * FRAME
    # a cough (under min_speech) is not sent ahead; a pause as long as the end is no pause
    assert [type(e) for e in detector.push(frames("..ss......"))] == [SpeechStarted, TurnDropped]
    same = TurnDetector(ScriptedVAD(), TurnOptions(onset_ms=64, end_ms=64, pre_roll_ms=0, min_speech_ms=64,
                                                   pause_ms=64))
    assert [type(e) for e in same.push(frames("..sss..."))] == [SpeechStarted, TurnEnded]


def test_bad_options_and_a_bad_vad_are_refused():
    with pytest.raises(ValueError, match="threshold is 1.5"):
        TurnOptions(threshold=1.5)
    with pytest.raises(ValueError, match="end_ms is 0"):
        TurnOptions(end_ms=0)
    with pytest.raises(ValueError, match="pause_ms is 700: it must be above 0 and at most end_ms"):
        TurnOptions(end_ms=600, pause_ms=700)
    with pytest.raises(ValueError, match="the VAD gave 1 probabilities for 2 frames"):
        TurnDetector(lambda audio: np.zeros(1), TurnOptions()).push(np.zeros(2 * FRAME, np.float32))


# ---------------------------------------------------------------- Silero VAD on real speech


def clip(name):
    from speechllm.audio import load_audio

    return load_audio(EXAMPLES / name)


def silence(seconds):
    return np.zeros(int(seconds * SR), np.float32)


@needs_silero
def test_silero_turns_on_real_speech_between_silences():
    speech = [clip("weather_awb.flac"), clip("coffee_espeak.flac"), clip("meeting_slt.flac")]
    parts, spans, t = [silence(1.0)], [], 1.0
    for audio in speech:
        parts += [audio, silence(1.5)]
        voiced = np.flatnonzero(np.abs(audio) > 0.02)  # where the clip's speech really is
        spans.append((t + voiced[0] / SR, t + voiced[-1] / SR))
        t += len(audio) / SR + 1.5
    audio = np.concatenate(parts)
    detector = TurnDetector(options=TurnOptions(end_ms=600))
    events = run(detector, audio, 1600)  # 100 ms pieces, as the page streams them
    ended = [e for e in events if isinstance(e, TurnEnded)]
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded] * 3
    for turn, (start, end) in zip(ended, spans, strict=True):
        assert abs(turn.start - start) < 0.15 and abs(turn.end - end) < 0.25, (turn, start, end)
        assert len(turn.audio) / SR == pytest.approx(turn.end - turn.start + 0.2 + 0.6, abs=0.1)


@needs_silero
def test_silero_a_short_pause_inside_a_turn_does_not_end_it_and_barge_in_on_speech():
    a, b = clip("weather_awb.flac"), clip("train_rms.flac")
    detector = TurnDetector(options=TurnOptions(end_ms=700))
    events = run(detector, np.concatenate([silence(0.5), a, silence(0.3), b, silence(1.0)]), 1600)
    assert [type(e) for e in events] == [SpeechStarted, TurnEnded]
    detector.answering = True
    events = run(detector, np.concatenate([silence(0.8), b, silence(1.0)]), 1600)
    assert [type(e) for e in events] == [BargeIn, TurnEnded]


@needs_silero
def test_silero_no_turn_from_silence_tones_or_noise():
    t = np.arange(2 * SR) / SR
    rng = np.random.default_rng(0)
    for name, audio in (("silence", silence(2.0)), ("tone", 0.3 * np.sin(2 * np.pi * 440 * t)),
                        ("chirp", 0.3 * np.sin(2 * np.pi * (200 + 200 * t) * t)),
                        ("noise", 0.05 * rng.standard_normal(2 * SR))):
        detector = TurnDetector()
        detector.answering = True
        assert run(detector, audio.astype(np.float32), 1600) == [], name
        assert detector.answering  # nothing barged in
