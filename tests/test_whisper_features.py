"""Whisper decoding features: timestamp rules, segments and seeking, language detection, fallback,
word alignment, subtitle cues; tiny models built here, and the real bundles where installed."""

import inspect
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import test_whisper
import torch

from speechllm.apps.cues import CueOptions, highlighted, split_cues
from speechllm.transcriber import ChunkResult, Segment, WhisperTranscriber
from speechllm.whisper import DecodingOptions, Whisper, WhisperConfig, WhisperTokenizer, decode, load_whisper
from speechllm.whisper.decoding import (
    ApplyTimestampRules,
    DecodingResult,
    GreedyDecoder,
    compression_ratio,
    detect_language,
    encode,
)
from speechllm.whisper.timing import (
    Word,
    align_words,
    dtw,
    median_filter,
    merge_punctuation,
    pauses,
    snap_to_pauses,
    split_words,
    trim_to_sound,
)
from speechllm.whisper.transcribe import (
    TranscribeOptions,
    best_attempt,
    is_silence,
    needs_fallback,
    split_at_timestamps,
    transcribe_windows,
)
from speechllm.zoo import ZOO

tiny_hf, tiny = test_whisper.tiny_hf, test_whisper.tiny  # the Whisper tests' tiny model (fixtures)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
BEGIN, EOT = 60, 50  # the tiny vocabulary: timestamps from 60, end-of-text 50


# ---------------------------------------------------------------- timestamp rules


def allowed(filter_: ApplyTimestampRules, seq: list[int], prompt: int = 2, vocab: int = 64) -> set[int]:
    logits = torch.zeros(1, vocab)
    logits[0, BEGIN:] = -3.0  # text likelier than any one timestamp, unless the rules say otherwise
    filter_.apply(logits, torch.tensor([[51] * prompt + seq]))
    kept = set(torch.nonzero(logits[0] > float("-inf")).flatten().tolist())
    return kept - set(range(51, 60))  # the specials are SuppressTokens' business


def test_timestamp_rules():
    rules = ApplyTimestampRules(BEGIN, EOT, sample_begin=2, max_initial_index=1)
    assert allowed(rules, []) == {60, 61}  # a timestamp first, at most max_initial
    assert allowed(rules, [60]) == set(range(0, 51))  # text (or end-of-text) after a start
    # text then a timestamp: closes the segment, so another timestamp (>= it) or end-of-text
    assert allowed(rules, [60, 5, 62]) == {50, 62, 63}
    # a closed pair: text (no timestamp) follows, and later timestamps never go back
    after_pair = allowed(rules, [60, 5, 62, 62])
    assert not after_pair & set(range(60, 64)) and 5 in after_pair
    later = allowed(rules, [60, 5, 62, 62, 7])
    assert later & set(range(60, 64)) == {63}  # a non-empty segment: strictly after 62


def test_timestamps_win_when_their_mass_does():
    rules = ApplyTimestampRules(BEGIN, EOT, sample_begin=0, max_initial_index=None)
    logits = torch.full((1, 64), -10.0)
    logits[0, 5] = 0.0
    logits[0, 60:] = -0.5  # each below the text token, together above it
    rules.apply(logits, torch.tensor([[60, 5]]))
    assert logits[0, :60].max() == float("-inf")


def test_decoded_tokens_follow_the_grammar(tiny):
    model, tok = tiny
    mel = torch.randn(3, 80, 300)
    results = decode(model, tok, mel, options=DecodingOptions(timestamps=True, max_new_tokens=20))
    for r in results:
        seq = list(r.tokens)
        assert seq and seq[0] >= BEGIN  # starts with a timestamp
        stamps = [t for t in seq if t >= BEGIN]
        assert stamps == sorted(stamps)
        for i in range(2, len(seq)):  # never three timestamps in a row
            assert not (seq[i] >= BEGIN and seq[i - 1] >= BEGIN and seq[i - 2] >= BEGIN)
    plain = decode(model, tok, mel, options=DecodingOptions(max_new_tokens=20))
    assert all(t < BEGIN for r in plain for t in r.tokens)  # without the option: no timestamps


# ---------------------------------------------------------------- segments and seeking


def test_split_at_timestamps():
    # two closed segments and a final single timestamp: the window is done
    assert split_at_timestamps([60, 1, 2, 62, 62, 3, 63], BEGIN) == ([(0, 2, [1, 2]), (2, 3, [3])], None)
    # the last segment cut off: keep the first, seek to where the second started
    assert split_at_timestamps([60, 1, 62, 62, 3, 4], BEGIN) == ([(0, 2, [1])], 2)
    # ends on a pair: done at the pair
    assert split_at_timestamps([60, 1, 61, 61], BEGIN) == ([(0, 1, [1])], 1)
    # no pairs: one segment, to the last timestamp when there is one, else the window's end
    assert split_at_timestamps([60, 1, 2, 63], BEGIN) == ([(0, 3, [1, 2])], None)
    assert split_at_timestamps([1, 2], BEGIN) == ([(0, -1, [1, 2])], None)
    assert split_at_timestamps([], BEGIN) == ([], None)


def result(text="a b c", avg_logprob=-0.2, no_speech_prob=0.1):
    return DecodingResult(text, (), avg_logprob, no_speech_prob)


def test_a_window_failing_every_temperature_keeps_its_best_attempt():
    options = TranscribeOptions()
    loop, unsure, surer = result("la " * 60, -0.1), result("a b c", -1.8), result("a b d", -1.3)
    assert best_attempt([loop, unsure, surer, result("x y", -2.5)], options) is surer  # not the hottest
    # every attempt loops: the shortest loop, not the surest (a loop grows surer as it runs on)
    short, long = result("Cuba, " * 13, -0.25), result("Cuba. " * 112, -0.06)
    assert short.compression_ratio > 2.4 and best_attempt([short, long], options) is short
    assert best_attempt([loop, unsure], TranscribeOptions(compression_ratio_threshold=None)) is loop


def test_the_fallback_is_the_default_and_zero_decodes_greedily():
    from speechllm.apps.cli import build_parser
    from speechllm.apps.commands.whisper_options import whisper_options
    from speechllm.whisper.transcribe import TEMPERATURE_FALLBACK

    parser = build_parser()
    default = whisper_options(parser.parse_args(["transcribe", "a.wav"]), is_speechlm=False)
    assert "temperature" not in default  # the transcriber's own default: Whisper's fallback
    default_temperature = inspect.signature(WhisperTranscriber).parameters["temperature"].default
    assert default_temperature == TEMPERATURE_FALLBACK == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    greedy = whisper_options(parser.parse_args(["transcribe", "a.wav", "--temperature", "0"]), False)
    assert greedy["temperature"] == (0.0,)
    assert default["best_of"] == TranscribeOptions().best_of == 1  # samples at each hotter temperature
    five = whisper_options(parser.parse_args(["transcribe", "a.wav", "--best-of", "5"]), False)
    assert five["best_of"] == 5


def test_fallback_and_silence_rules():
    options = TranscribeOptions(temperatures=(0.0, 0.5))
    assert not needs_fallback(result(), options)
    assert needs_fallback(result(avg_logprob=-1.5), options)
    assert needs_fallback(result(text="la " * 60), options) and compression_ratio("la " * 60) > 2.4
    assert not needs_fallback(result(avg_logprob=-1.5, no_speech_prob=0.9), options)  # silence: no retry
    assert is_silence(result(avg_logprob=-1.5, no_speech_prob=0.9), options)
    assert not is_silence(result(avg_logprob=-0.1, no_speech_prob=0.9), options)  # sure of its words
    with pytest.raises(ValueError):
        TranscribeOptions(temperatures=())


def test_sampling_is_seeded(tiny):
    model, tok = tiny
    mel = torch.randn(2, 80, 200)
    hot = DecodingOptions(temperature=1.0, max_new_tokens=12, seed=3)
    first, again = decode(model, tok, mel, options=hot), decode(model, tok, mel, options=hot)
    assert [r.tokens for r in first] == [r.tokens for r in again] and first[0].temperature == 1.0
    other = decode(model, tok, mel, options=DecodingOptions(temperature=1.0, max_new_tokens=12, seed=4))
    assert [r.tokens for r in other] != [r.tokens for r in first]


def test_best_of_keeps_the_most_probable_sample(tiny):
    model, tok = tiny
    mel = torch.randn(2, 80, 200)
    seen = []

    class Recording(GreedyDecoder):
        def finalize(self, tokens, sum_logprobs):
            seen.extend(out := super().finalize(tokens, sum_logprobs))
            return out

    hot = DecodingOptions(temperature=1.0, max_new_tokens=12, seed=3, best_of=4)
    results = decode(model, tok, mel, options=hot, token_decoder=Recording(tok.eot, 1.0, 3, samples=4))
    assert len(seen) == 2 and all(len(samples) == 4 for samples in seen)
    assert len({tuple(t) for t, _ in seen[0]}) > 1  # independent samples
    begin = len(tok.sot_sequence("en", "transcribe", False))

    def per_token(seq, score):
        text = seq[begin:]
        return score / max(len(text[: text.index(tok.eot)] if tok.eot in text else text), 1)

    for res, samples in zip(results, seen, strict=True):
        chosen = res.avg_logprob * (len(res.tokens) + 1) / max(len(res.tokens), 1)
        assert chosen == pytest.approx(max(per_token(t, s) for t, s in samples))
    assert [r.tokens for r in decode(model, tok, mel, options=hot)] == [r.tokens for r in results]
    with pytest.raises(ValueError, match="temperature above 0"):
        GreedyDecoder(tok.eot, 0.0, samples=2)
    with pytest.raises(ValueError, match="best_of"):
        TranscribeOptions(best_of=0)


def test_transcribe_windows_on_tiny_model(tiny):
    model, tok = tiny
    rng = np.random.default_rng(0)
    windows = [rng.normal(0, 0.1, 16_000 * 2).astype(np.float32), np.zeros(0, np.float32),
               rng.normal(0, 0.1, 16_000).astype(np.float32)]
    options = TranscribeOptions(temperatures=(0.0, 0.4), word_timestamps=True, max_new_tokens=12,
                                no_speech_threshold=None)
    out = transcribe_windows(model, tok, windows, options)
    assert len(out) == 3 and out[1].segments == () and out[0].language == "en"
    for window, res in zip(windows, out, strict=True):
        for s in res.segments:
            assert 0 <= s.start <= s.end <= len(window) / 16_000 + 1e-6
            assert s.words is not None and s.temperature in (0.0, 0.4)
            assert all(s.start - 1e-6 <= w.start <= w.end for w in s.words)


# ---------------------------------------------------------------- language detection


def test_detect_language_shape(tiny, tmp_path):
    _, tok = tiny
    torch.manual_seed(0)
    config = WhisperConfig(d_model=32, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, n_vocab=51865,
                           n_text_ctx=16, d_ffn=64)
    model = Whisper(config).eval()
    assert config.is_multilingual
    multi = WhisperTokenizer(tok.tokenizer, multilingual=True)
    audio, mask = encode(model, torch.randn(2, 80, 100), torch.tensor([100, 60]))
    probs = detect_language(model, multi, audio, mask)
    assert len(probs) == 2 and all(set(p) == {"en", "de"} for p in probs)
    assert all(abs(sum(p.values()) - 1) < 1e-5 and list(p.values()) == sorted(p.values(), reverse=True)
               for p in probs)
    among = detect_language(model, multi, audio, mask, among=("de",))  # detection among given ones only
    assert all(p == {"de": pytest.approx(1.0)} for p in among)
    with pytest.raises(ValueError, match="not Whisper language codes: xx"):
        detect_language(model, multi, audio, mask, among=("de", "xx"))
    results = decode(model, multi, torch.randn(1, 80, 100), options=DecodingOptions(max_new_tokens=3))
    assert results[0].language in ("en", "de") and set(results[0].language_probs) == {"en", "de"}
    fixed = decode(model, multi, torch.randn(1, 80, 100),
                   options=DecodingOptions(language="de", task="translate", max_new_tokens=3))
    assert fixed[0].language == "de" and fixed[0].language_probs is None
    with pytest.raises(ValueError, match="English-only"):
        detect_language(tiny[0], tok, audio, mask)


# ---------------------------------------------------------------- word alignment


def test_dtw_and_median_filter():
    cost = np.ones((3, 6))
    for i, cols in enumerate(([0, 1], [2, 3], [4, 5])):
        cost[i, cols] = 0.0
    rows, cols = dtw(cost)
    assert rows.tolist() == [0, 0, 1, 1, 2, 2] and cols.tolist() == [0, 1, 2, 3, 4, 5]
    x = torch.tensor([[1.0, 1.0, 9.0, 1.0, 5.0, 5.0, 5.0]])
    assert median_filter(x, 3).tolist() == [[1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 5.0]]  # the spike gone


def test_words_and_punctuation(tiny):
    _, tok = tiny
    ids = tok.encode(" the cat, sat.")
    words, groups = split_words(tok, ids)
    assert "".join(words) == " the cat, sat." and sum(map(len, groups)) == len(ids)
    assert words[0] == " the" and "," in words  # punctuation starts a piece, merged below
    merged = merge_punctuation([Word(w, i, i + 1, 0.5) for i, w in enumerate(words)])
    assert [w.word for w in merged] == [" the", " cat,", " sat."]
    assert merged[1].start == words.index(" cat")  # a word keeps its own times


def test_trim_to_sound():
    audio = np.zeros(16_000 * 3, np.float32)
    audio[8_000:16_000] = 0.5  # a word at 0.5-1.0 s
    audio[24_000:32_000] = 0.5  # the next at 1.5-2.0 s
    tiled = [Word(" a", 0.0, 1.3, 0.9), Word(" b", 1.3, 2.6, 0.9), Word(" c", 2.6, 3.0, 0.9)]
    trimmed = trim_to_sound(tiled, audio)
    assert [(w.start, w.end) for w in trimmed] == [(0.5, 1.0), (1.5, 2.0), (2.6, 3.0)]  # silent c kept
    late = trim_to_sound([Word(" a", 0.4, 1.6, 0.9)], audio)  # a span reaching into the next word
    assert (late[0].start, late[0].end) == (0.5, 1.0)


def test_snap_to_pauses():
    audio = np.zeros(16_000 * 4, np.float32)
    for a, b in ((0.3, 0.5), (0.8, 1.6), (2.0, 2.4), (2.52, 3.0)):  # "the", "value", "of" + "it"
        audio[int(a * 16_000) : int(b * 16_000)] = 0.5
    assert pauses(audio) == [(0.5, 0.8), (1.6, 2.0)]  # 0.12 s (a stop's closure) is no pause
    # the path gave "the" the start of "value"'s sound and "value" the pause after "the"
    words = [Word(" the", 0.3, 1.0, 0.9), Word(" value", 1.0, 1.5, 0.9), Word(" of", 1.5, 2.42, 0.9),
             Word(" it", 2.42, 3.0, 0.9)]
    snapped = snap_to_pauses(words, audio)
    assert [(w.start, w.end) for w in snapped] == [(0.3, 0.5), (0.8, 1.6), (2.0, 2.42), (2.42, 3.0)]
    far = [Word(" a", 0.0, 2.9, 0.9), Word(" b", 2.9, 3.5, 0.9)]  # no boundary within reach of a pause
    assert snap_to_pauses(far, audio) == far
    # a boundary moved past an unmatched one: the times stay in order
    crowded = [Word(" a", 0.3, 0.55, 0.9), Word(" b", 0.55, 0.6, 0.9), Word(" c", 0.6, 1.6, 0.9)]
    times = [t for w in snap_to_pauses(crowded, audio) for t in (w.start, w.end)]
    assert times == sorted(times) and (0.5 in times and 0.8 in times)


def test_align_words_on_tiny_model(tiny):
    model, tok = tiny
    audio, mask = encode(model, torch.randn(1, 80, 400), torch.tensor([400]))
    segments = [tok.encode(" the cat"), tok.encode(" sat.")]
    grouped = align_words(model, tok, audio, mask, segments, n_frames=400)
    assert [[w.word for w in g] for g in grouped] == [[" the", " cat"], [" sat."]]
    flat = [w for g in grouped for w in g]
    assert all(0 <= w.start <= w.end <= 4.0 and 0 < w.probability <= 1 for w in flat)
    assert [w.start for w in flat] == sorted(w.start for w in flat)


# ---------------------------------------------------------------- transcripts, rows, cues


def test_chunks_assemble_with_offsets_and_language():
    word = Word(" hi", 0.5, 0.8, 0.9)
    chunk = ChunkResult((Segment(0.5, 1.0, "hi", None, -0.2, 0.1, 0.7, 0.0, (word,)),), "es",
                        {"es": 0.9, "en": 0.1})
    other = ChunkResult((Segment(0.0, 2.0, "hola"),), "en", {"en": 0.8, "es": 0.2})

    class Piece:  # an AudioSegment's place in the recording
        def __init__(self, start, end):
            self.start, self.end = start, end

    parts = [(Piece(16_000 * 10, 16_000 * 40), chunk), (Piece(0, 16_000 * 5), other)]
    t = WhisperTranscriber._assemble(parts, 40.0)
    assert [s.text for s in t.segments] == ["hola", "hi"] and t.text == "hola hi"
    assert t.segments[1].start == 10.5 and t.segments[1].words[0].start == 10.5
    assert t.language == "es" and abs(sum(t.language_probs.values()) - 1) < 1e-3  # 30 s of es outweigh 5 s
    row = t.segments[1].to_row()
    assert row["avg_logprob"] == -0.2 and row["words"] == [{"word": " hi", "start": 10.5, "end": 10.8,
                                                           "probability": 0.9}]
    assert Segment(0, 1, "x").to_row() == {"start": 0, "end": 1, "text": "x"}  # a speech-LLM's row as before


LONG = ("It was a bright cold day in April, and the clocks were striking thirteen. Winston Smith, his chin "
        "nuzzled into his breast in an effort to escape the vile wind, slipped quickly through the glass "
        "doors of Victory Mansions, though not quickly enough to prevent a swirl of gritty dust from "
        "entering along with him. Supercalifragilisticexpialidociousnessandmoreandmorewords too.")


@pytest.mark.parametrize("options", [CueOptions(), CueOptions(max_line_chars=20, max_lines=1,
                                                               max_cue_seconds=2.5)])
def test_cues_fit_the_limits(options):
    segments = [Segment(0.0, 25.0, LONG), Segment(25.0, 27.0, "Short one.")]
    cues = split_cues(segments, options)
    assert " ".join(" ".join(c.lines) for c in cues).split()[:10] == LONG.split()[:10]
    assert len(" ".join(" ".join(c.lines) for c in cues).split()) >= len(f"{LONG} Short one.".split())
    for c in cues:
        assert len(c.lines) <= options.max_lines
        assert all(len(line) <= options.max_line_chars for line in c.lines)
        assert 0 < c.end - c.start <= options.max_cue_seconds + 1e-9
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:], strict=False))
    assert cues[-1].lines == ("Short one.",)  # no cue spans two segments


def test_cues_follow_word_times_and_highlight():
    words = tuple(Word(f" w{i}", i * 1.0, i * 1.0 + 0.5, 1.0) for i in range(10))
    cues = split_cues([Segment(0, 10, " ".join(w.word.strip() for w in words), words=words)])
    assert cues[0].start == 0.0 and cues[0].end == 6.5  # words 0-6 fit 7 s from their own times
    assert cues[1].start == 7.0
    marked = highlighted(cues[1])
    assert "<u>w7</u>" in marked[0].text and marked[0].start == 7.0 and marked[-1].end == cues[1].end


# ---------------------------------------------------------------- the real models, where installed

tiny_en = pytest.mark.skipif(ZOO["whisper-tiny.en"].bundle.folder() is None, reason="tiny.en not installed")
base = pytest.mark.skipif(ZOO["whisper-base"].bundle.folder() is None, reason="whisper-base not installed")


@tiny_en
def test_real_clip_gets_sentence_segments_and_words(tmp_path, one_thread):
    from speechllm.apps.cli import main
    from speechllm.audio import load_audio, write_audio

    clips = sorted(EXAMPLES.glob("*.flac"))[1:4]
    pause = np.zeros(12_000, dtype=np.float32)
    audio = np.concatenate([part for c in clips for part in (load_audio(c), pause)])
    wav = tmp_path / "three.wav"
    write_audio(wav, audio)
    out = tmp_path / "out.jsonl"
    assert main(["transcribe", str(wav), "-o", str(out), "-q", "--word-timestamps", "--format", "srt",
                 "--max-line-chars", "30"]) == 0
    row = json.loads(out.read_text())
    segments = row["segments"]
    assert len(segments) >= 3 and row["language"] == "en"  # one per sentence, not one per chunk
    assert all({"avg_logprob", "no_speech_prob", "compression_ratio", "words"} <= set(s) for s in segments)
    words = [w for s in segments for w in s["words"]]
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and words[-1]["end"] <= len(audio) / 16_000 + 0.1
    boston = next(w for w in words if "Boston" in w["word"])
    sentence = next(i for i, c in enumerate(clips) if "Boston" in c.with_suffix(".txt").read_text())
    offset = sum(len(load_audio(c)) + len(pause) for c in clips[:sentence]) / 16_000
    assert offset < boston["start"] < offset + len(load_audio(clips[sentence])) / 16_000
    srt = (tmp_path / "three.srt").read_text()
    assert all(len(line) <= 30 for line in srt.splitlines())


@base
def test_real_language_detection(tmp_path, one_thread):
    model, tok = load_whisper(_base_path())
    from speechllm.audio import load_audio

    clips = [load_audio(sorted(EXAMPLES.glob("*.flac"))[0])]
    if shutil.which("espeak-ng"):
        wav = tmp_path / "es.wav"
        text = "Buenos días, ¿cómo estás? Hoy hace mucho sol."
        subprocess.run(["espeak-ng", "-v", "es", "-w", str(wav), text], check=True)
        clips.append(load_audio(wav))
    out = transcribe_windows(model, tok, clips, TranscribeOptions(max_new_tokens=4, timestamps=False))
    assert out[0].language == "en" and out[0].language_probs["en"] > 0.5
    if len(clips) > 1:
        assert out[1].language == "es"


def _base_path():
    from speechllm.zoo import resolve

    return resolve("whisper-base").path
