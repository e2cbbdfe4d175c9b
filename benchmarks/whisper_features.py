"""Whisper decoding features, measured on synthetic speech whose truth is known.

* language ID: ``whisper-base`` on held-out English and Spanish clips (2-8 s; verses of the World
  English Bible and Reina-Valera 1909, the two sides of different verses), English voiced by
  espeak-ng variants, Piper joe and flite (slt, awb, rms), Spanish by espeak-ng ``es`` variants
  and Kokoro (its style tables and blends of them) reading espeak-ng's Spanish IPA; detection as
  ``speechllm transcribe`` does it (30 s window, one decoder step);
* ``--task translate``: ``whisper-base`` translating some of the Spanish clips, BLEU (sacrebleu)
  against the English verse (informative: a Bible verse has many good translations);
* subtitles: a >= 5 min recording of many sentences (flite slt) through ``WhisperTranscriber``
  with word timestamps, its cues split with the default limits (42 characters x 2 lines, 7 s);
* word timestamps: words synthesized one at a time (flite slt), their silence trimmed, joined
  with random gaps (pauses of 0.15-0.5 s, or run on with 0-0.05 s), so each word's true start
  and end are known; |error| of start and end times of the recognised words matched to the
  spoken ones.

    python benchmarks/whisper_features.py --json benchmarks/results/whisper-features.json
"""

from __future__ import annotations

import argparse
import difflib
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from speechllm.data_recipes.texts import fortunes, verse_pairs  # noqa: E402
from speechllm.data_recipes.voices import Speaker, synthesize  # noqa: E402

SR = 16_000
EN_SPEAKERS = ["espeak:en-us+m3:s150", "espeak:en-gb+f2:s160", "espeak:en-us+f4:s140", "espeak:en+m1:s155",
               "piper:joe", "flite:slt", "flite:awb", "flite:rms"]
ES_SPEAKERS = ["espeak:es+m2:s150", "kokoro:jf_alpha", "espeak:es+f3:s155", "kokoro:jm_kumo",
               "espeak:es-419+m1:s145", "kokoro:jf_alpha:0.5+jm_kumo:0.5", "espeak:es+f5:s165",
               "kokoro:jf_nezumi:0.3+jm_kumo:0.7"]


def speak(speaker: str, text: str, language: str) -> np.ndarray:
    if speaker.startswith("kokoro:"):
        from speechllm.audio import resample
        from speechllm.tts.kokoro import KokoroVoice

        voice = KokoroVoice(speaker.split(":", 1)[1], language="es" if language == "es" else "en-us",
                            threads=torch.get_num_threads())
        return resample(voice.synthesize(text), 24_000, SR).astype(np.float32)
    engine, rest = speaker.split(":", 1)
    fields = rest.split(":")
    speed = next((int(f[1:]) for f in fields[1:] if f.startswith("s")), None)
    return synthesize(Speaker(engine, fields[0], speed=speed), text)


def words_of(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def pick_verses(n: int, seed: int) -> tuple[list, list]:
    """2n verse pairs of 6-16 words on both sides: n for English clips, n others for Spanish."""
    pairs = [p for p in verse_pairs() if 6 <= len(p.en.split()) <= 16 and 6 <= len(p.es.split()) <= 16]
    random.Random(seed).shuffle(pairs)
    return pairs[:n], pairs[n : 2 * n]


def make_clips(texts: list[str], speakers: list[str], language: str,
               numbers: list[int]) -> list[tuple[np.ndarray, str, str]]:
    out = []
    for i, text in zip(numbers, texts, strict=True):
        speaker = speakers[i % len(speakers)]
        try:
            audio = speak(speaker, text, language)
        except Exception as exc:  # a missing voice engine: say so, use the first espeak voice
            print(f"{speaker}: {exc}; espeak instead", file=sys.stderr)
            speaker = speakers[0]
            audio = speak(speaker, text, language)
        out.append((audio[: 8 * SR], text, speaker))
    return out


def language_id(model, tok, clips: list[np.ndarray], batch: int = 8,
                window: str = "30s") -> list[dict[str, float]]:
    """One decoder step after <|sot|> over each clip padded to 30 s (``window="30s"``: what
    ``transcribe`` does) or encoded at its own length (``"clip"``: ~5x less encoder work)."""
    from speechllm.features import N_SAMPLES_30S, log_mel_spectrogram
    from speechllm.whisper.decoding import detect_language, encode

    probs = []
    for i in range(0, len(clips), batch):
        part = clips[i : i + batch]
        lengths = torch.tensor([len(c) for c in part])
        audio = torch.zeros(len(part), N_SAMPLES_30S)
        for row, c in enumerate(part):
            audio[row, : len(c)] = torch.from_numpy(c)
        if window == "clip":
            audio = audio[:, : int(lengths.max())]
        mel, frames = log_mel_spectrogram(audio, lengths, pad_to=N_SAMPLES_30S if window == "30s" else None)
        with torch.inference_mode():
            enc, mask = encode(model, mel, frames, pad_to_30s=False)
        probs += detect_language(model, tok, enc, mask)
    return probs


def bench_language(args, report: dict) -> None:
    from speechllm.whisper import load_whisper
    from speechllm.zoo import resolve

    en_pairs, es_pairs = pick_verses(args.clips, args.seed)
    from speechllm.text_normalize import spoken_form

    index, count = (int(x) for x in args.shard.split("/"))
    mine = [i for i in range(len(en_pairs)) if i % count == index]  # a shard's clips (--shard i/n)
    t0 = time.perf_counter()
    en = make_clips([spoken_form(en_pairs[i].en) for i in mine], EN_SPEAKERS, "en", mine)
    es_voices = [v for v in ES_SPEAKERS if args.voices == "all" or not v.startswith("kokoro")]
    es = make_clips([es_pairs[i].es for i in mine], es_voices, "es", mine)
    synth_s = time.perf_counter() - t0
    model, tok = load_whisper(resolve("whisper-base").path)
    t0 = time.perf_counter()
    clips = []
    for lang, made in (("en", en), ("es", es)):
        found = language_id(model, tok, [c[0] for c in made], window=args.lid_window)
        for (audio, _, speaker), probs in zip(made, found, strict=True):
            clips.append({"language": lang, "speaker": speaker, "seconds": round(len(audio) / SR, 2),
                          "guess": next(iter(probs)), "prob": round(probs.get(lang, 0.0), 4)})
    if args.reference:  # faster-whisper's detection on the same weights and clips
        try:
            from faster_whisper import WhisperModel

            fw = WhisperModel(str(resolve("whisper-base").path), device="cpu", compute_type="float32",
                              cpu_threads=args.threads)
            for clip, (audio, _, _) in zip(clips, en + es, strict=True):
                clip["reference_guess"] = fw.detect_language(audio, vad_filter=False)[0]
        except Exception as exc:  # not installed, or not a CTranslate2 folder
            print(f"faster-whisper language ID: {exc}", file=sys.stderr)
    report["language_id"] = {"model": "whisper-base", "shard": args.shard, "clips": clips,
                             "window": args.lid_window,
                             "synth_seconds": round(synth_s, 1),
                             "detect_seconds": round(time.perf_counter() - t0, 1)}
    summarize_language(report)
    if args.translate:
        from speechllm.metrics_bleu import corpus_bleu
        from speechllm.whisper.transcribe import TranscribeOptions, transcribe_windows

        subset = list(zip(es, [es_pairs[i] for i in mine], strict=True))[: args.translate]
        t0 = time.perf_counter()
        outs = []
        for i in range(0, len(subset), 8):
            outs += transcribe_windows(model, tok, [c[0] for c, _ in subset[i : i + 8]],
                                       TranscribeOptions(task="translate", language="es"))
        hyps = [" ".join(s.text for s in o.segments) for o in outs]
        refs = [spoken_form(p.en) for _, p in subset]
        bleu = corpus_bleu(refs, hyps)
        report["translate"] = {"model": "whisper-base", "clips": len(subset),
                               "bleu": round(bleu.score, 1),
                               "signature": bleu.signature, "seconds": round(time.perf_counter() - t0, 1),
                               "examples": [{"es": p.es, "ref": r, "hyp": h}
                                            for (_, p), r, h in zip(subset[:5], refs, hyps, strict=False)]}
        print(f"translate es->en: BLEU {bleu.score:.1f} on {len(subset)}", file=sys.stderr)


def summarize_language(report: dict) -> None:
    """Accuracy per language (and per voice) over every clip in ``report["language_id"]``."""
    clips = report["language_id"]["clips"]
    rows = []
    for lang in ("en", "es"):
        mine = [c for c in clips if c["language"] == lang]
        if not mine:
            continue
        by_voice: dict[str, list[bool]] = {}
        for c in mine:
            speaker = c["speaker"]
            voice = speaker if speaker.startswith("kokoro:") else ":".join(speaker.split(":")[:2])
            by_voice.setdefault(voice, []).append(c["guess"] == lang)
        wrong = [c["guess"] for c in mine if c["guess"] != lang]
        rows.append({"language": lang, "clips": len(mine),
                     "accuracy": round(100 * float(np.mean([c["guess"] == lang for c in mine])), 1),
                     "mean_prob": round(float(np.mean([c["prob"] for c in mine])), 3),
                     "seconds": round(float(np.mean([c["seconds"] for c in mine])), 2),
                     "wrong_as": {w: wrong.count(w) for w in sorted(set(wrong))},
                     **({"faster_whisper_accuracy": round(100 * float(np.mean(
                         [c["reference_guess"] == lang for c in mine])), 1)}
                        if all("reference_guess" in c for c in mine) else {}),
                     "by_voice": {v: round(100 * float(np.mean(ok)), 1)
                                  for v, ok in sorted(by_voice.items())}})
        print(f"language ID {lang}: {rows[-1]['accuracy']} % of {len(mine)}", file=sys.stderr)
    report["language_id"]["rows"] = rows


def merge(paths: list[Path], report: dict) -> None:
    """Shards' language-ID clips (and translate, subtitles and word runs) into ``report``; the
    first shard's window is the main one, shards with another go to ``language_id_<window>``."""
    clips, seconds, window, others = [], 0.0, None, {}
    for path in paths:
        part = json.loads(path.read_text())
        if "language_id" in part:
            lid = part["language_id"]
            window = window or lid.get("window")
            if lid.get("window") != window:
                other = {"language_id": dict(lid, model="whisper-base")}
                summarize_language(other)
                others[f"language_id_{lid.get('window')}"] = other["language_id"]
                continue
            clips += lid["clips"]
            seconds += lid["detect_seconds"]
        for key in ("translate", "subtitles"):
            if key in part:
                report[key] = part[key]
        if "word_timestamps" in part:  # a list per model (a single dict from older runs)
            rows = part["word_timestamps"]
            rows = [rows] if isinstance(rows, dict) else rows
            key = lambda w: (w["model"], w.get("gaps"), w.get("system", "speechllm"))  # noqa: E731
            models = {key(w) for w in rows}
            report["word_timestamps"] = [w for w in report.get("word_timestamps", []) if key(w) not in models]
            report["word_timestamps"] += rows
    report["language_id"] = {"model": "whisper-base", "clips": clips, "detect_seconds": round(seconds, 1),
                             "window": window}
    summarize_language(report)
    report.update(others)


def long_recording(seconds: float, seed: int) -> tuple[np.ndarray, str]:
    quotes = [q for q in fortunes() if 6 <= len(q.split()) <= 30 and q.isascii()]
    random.Random(seed).shuffle(quotes)
    parts, texts, total = [], [], 0.0
    for q in quotes:
        audio = synthesize(Speaker("flite", "slt"), q)
        parts += [audio, np.zeros(int(0.4 * SR), np.float32)]
        texts.append(q)
        total += len(audio) / SR + 0.4
        if total >= seconds:
            break
    return np.concatenate(parts), " ".join(texts)


def bench_subtitles(args, report: dict) -> None:
    from speechllm.apps.cues import CueOptions, split_cues
    from speechllm.metrics import word_error_rate
    from speechllm.transcriber import WhisperTranscriber

    audio, text = long_recording(args.long_seconds, args.seed)
    model = args.words_models.split(",")[0]
    transcriber = WhisperTranscriber(model, word_timestamps=True, segmenter="fixed")
    t0 = time.perf_counter()
    transcript = transcriber.transcribe(audio)
    elapsed = time.perf_counter() - t0
    options = CueOptions()
    cues = split_cues(transcript.segments, options)
    report["subtitles"] = {
        "model": model, "audio_seconds": round(len(audio) / SR, 1),
        "segments": len(transcript.segments),
        "longest_segment_s": round(max(s.end - s.start for s in transcript.segments), 2),
        "cues": len(cues), "longest_cue_s": round(max(c.end - c.start for c in cues), 2),
        "longest_line_chars": max(len(line) for c in cues for line in c.lines),
        "most_lines": max(len(c.lines) for c in cues), "limits": [options.max_line_chars, options.max_lines,
                                                               options.max_cue_seconds],
        "wer": round(100 * word_error_rate([text], [transcript.text]).rate, 1), "seconds": round(elapsed, 1)}
    print(f"subtitles: {report['subtitles']}", file=sys.stderr)


WORD_GAPS = {"pauses": (0.15, 0.5), "run-on": (0.0, 0.05)}  # seconds between words, drawn uniformly


def word_recording(n_words: int, seed: int, gaps: tuple[float, float] = WORD_GAPS["pauses"]
                   ) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Words spoken one at a time, silence trimmed (-40 dB of the word's peak), joined by gaps
    drawn from ``gaps`` seconds; returns the audio and each word's true (word, start, end)."""
    rng = random.Random(seed)
    quotes = [q for q in fortunes() if q.isascii() and 8 <= len(q.split()) <= 20]
    rng.shuffle(quotes)
    chosen = []
    for q in quotes:
        chosen += [w for w in words_of(q) if w.isalpha()]
        if len(chosen) >= n_words:
            break
    parts, truth, t = [np.zeros(int(0.3 * SR), np.float32)], [], 0.3
    for w in chosen[:n_words]:
        audio = synthesize(Speaker("flite", "slt"), w)
        loud = np.flatnonzero(np.abs(audio) > 0.01 * np.abs(audio).max())
        audio = audio[loud[0] : loud[-1] + 1]
        truth.append((w, t, t + len(audio) / SR))
        gap = rng.uniform(*gaps)
        parts += [audio, np.zeros(int(gap * SR), np.float32)]
        t += len(audio) / SR + int(gap * SR) / SR
    return np.concatenate(parts), truth


def bench_words(args, report: dict) -> None:
    """Each model on the words joined by pauses and run on (gaps too short to be pauses)."""
    report["word_timestamps"] = [r for r in report.get("word_timestamps", []) if isinstance(r, dict)
                                 and r.get("model") not in args.words_models.split(",")]
    for name, gaps in WORD_GAPS.items():
        audio, truth = word_recording(args.words, args.seed, gaps)
        for model in args.words_models.split(","):
            rows = [word_errors(model, audio, truth)]
            if args.reference and (theirs := faster_whisper_words(model, audio, args.threads)) is not None:
                rows.append(dict(word_errors(model, audio, truth, theirs), system="faster-whisper"))
            for row in rows:
                report["word_timestamps"].append({"system": "speechllm", **row, "gaps": name,
                                                  "gap_range_s": list(gaps)})
                print(f"word timestamps: {report['word_timestamps'][-1]}", file=sys.stderr)


def faster_whisper_words(model: str, audio: np.ndarray, threads: int) -> list | None:
    """faster-whisper's words (its own cross-attention DTW, as openai-whisper's) on the same
    CTranslate2 weights, English, greedy, no VAD; None where it or the folder is missing."""
    try:
        from faster_whisper import WhisperModel

        from speechllm.zoo import resolve

        fw = WhisperModel(str(resolve(model).path), device="cpu", compute_type="float32", cpu_threads=threads)
    except Exception as exc:  # not installed, or not a CTranslate2 folder
        print(f"faster-whisper {model}: {exc}", file=sys.stderr)
        return None
    segments, _ = fw.transcribe(audio, language="en", beam_size=1, word_timestamps=True, vad_filter=False)
    return [w for s in segments for w in s.words]


def word_errors(model: str, audio: np.ndarray, truth: list[tuple[str, float, float]],
                words: list | None = None) -> dict:
    """|error| of the recognised words' times against ``truth``; ``words`` (objects with
    ``word``, ``start``, ``end``) from another system, else ``model`` through ``WhisperTranscriber``."""
    if words is None:
        from speechllm.transcriber import WhisperTranscriber

        transcriber = WhisperTranscriber(model, word_timestamps=True, segmenter="fixed")
        words = [w for s in transcriber.transcribe(audio).segments for w in (s.words or ())]
    hyp = [(words_of(w.word), w) for w in words]
    hyp_tokens = [(tok, w) for toks, w in hyp for tok in toks[:1]]
    matcher = difflib.SequenceMatcher(a=[t[0] for t in truth], b=[h[0] for h in hyp_tokens], autojunk=False)
    signed = []  # (start error, end error), + late
    for block in matcher.get_matching_blocks():
        for k in range(block.size):
            _, t0, t1 = truth[block.a + k]
            w = hyp_tokens[block.b + k][1]
            signed.append((w.start - t0, w.end - t1))
    bias = np.mean(signed, axis=0)
    starts, ends = [abs(a) for a, _ in signed], [abs(b) for _, b in signed]
    both = np.array(starts + ends)
    return {
        "model": model, "words": len(truth), "matched": len(starts),
        "audio_seconds": round(len(audio) / SR, 1),
        "start_mean_s": round(float(np.mean(starts)), 3),
        "start_p90_s": round(float(np.percentile(starts, 90)), 3),
        "end_mean_s": round(float(np.mean(ends)), 3), "end_p90_s": round(float(np.percentile(ends, 90)), 3),
        "mean_s": round(float(both.mean()), 3), "p90_s": round(float(np.percentile(both, 90)), 3),
        "within_0.2s": round(100 * float(np.mean(both <= 0.2)), 1),
        "start_bias_s": round(float(bias[0]), 3), "end_bias_s": round(float(bias[1]), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=100, help="clips per language for language ID")
    parser.add_argument("--translate", type=int, default=24, help="Spanish clips translated (0: none)")
    parser.add_argument("--long-seconds", type=float, default=305.0, help="length of the subtitle recording")
    parser.add_argument("--words", type=int, default=80, help="words in the word-timestamp recording")
    parser.add_argument("--words-models", default="whisper-tiny.en,whisper-base",
                        help="models whose word timestamps are measured (the first also makes the subtitles)")
    parser.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                        help="also run faster-whisper on the same weights (language ID, word times)")
    parser.add_argument("--parts", default="language,words,subtitles")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shard", default="0/1", help="language ID on every n-th clip from the i-th (i/n)")
    parser.add_argument("--merge", type=Path, nargs="+", help="combine these runs' results into --json")
    parser.add_argument("--lid-window", choices=["30s", "clip"], default="30s",
                        help="language ID on the 30 s window (as transcribe) or on the clip alone")
    parser.add_argument("--voices", choices=["all", "fast"], default="all",
                        help="fast: espeak-ng and Piper only (no Kokoro, ~10x slower to synthesize)")
    parser.add_argument("--seed", type=int, default=26)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks/results/whisper-features.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = json.loads(args.json.read_text()) if args.json.is_file() else {}
    if args.merge:
        merge(args.merge, report)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        return
    parts = {"language": bench_language, "subtitles": bench_subtitles, "words": bench_words}
    for name in args.parts.split(","):
        parts[name](args, report)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")  # after each part


if __name__ == "__main__":
    main()
