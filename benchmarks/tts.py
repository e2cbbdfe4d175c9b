"""Streaming TTS benchmark: the project's voices side by side with Piper joe, in one run.

    .venv/bin/python benchmarks/tts.py --voices speechllm-joe piper-joe --limit 60 --threads 1 \
        --distilled runs/tts/joe-10h --json benchmarks/results/tts.json

For every voice and held-out sentence (the ``test`` split of a tts corpus, Piper joe's rows):
* intelligibility: WER of the synthesized audio transcribed by Whisper tiny.en through
  faster-whisper (CTranslate2 int8, if installed) and through the project's Whisper;
* streaming: time to the first audio chunk (median and 90th percentile) and real-time factor
  (wall time / audio time) of ``synthesize(text, stream=True)``;
* non-streaming: real-time factor of ``synthesize(text)`` (full-attention flow matching).
A voice may be a registry name or a TTS model folder, so voices trained with different
text:speech ratios compare in one table. ``--resynthesis CACHE`` adds, for the first own voice,
the WER of its flow + vocoder (and of the flow's prior μ alone) on the tokenizer's tokens of the
recorded test audio, and of its vocoder on the recorded mel, plain and blurred over 5 and 9 frames
(a known smear, with its normalised-mel MSE, to read the prior's MSE against): where
intelligibility is lost, stage by stage. ``--distilled CACHE`` does the same for the first
phoneme-route voice (``speechllm data distill``'s test split): the teacher's audio, the vocoder on
the teacher's mel, the acoustic model's mel with the teacher's durations and with its own, and how far
the audio's own mel lies from the teacher's where the frames line up.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from speechllm.audio import resample
from speechllm.manifest import read_manifest
from speechllm.metrics import word_error_rate
from speechllm.text_normalize import normalize
from speechllm.tts import DEFAULT_VOICE
from speechllm.zoo import DEFAULT_ASR, PIPER_VOICE

REPO = Path(__file__).resolve().parent.parent


class Transcribers:
    """Whisper tiny.en two ways; audio in at any rate, text out."""

    def __init__(self, threads: int):
        from speechllm.transcriber import WhisperTranscriber

        self.ours = WhisperTranscriber(DEFAULT_ASR, device="cpu", beam_size=1)
        self.fw = None
        try:
            from faster_whisper import WhisperModel

            from speechllm.zoo import resolve

            self.fw = WhisperModel(str(resolve(DEFAULT_ASR).path), device="cpu", compute_type="int8",
                                   cpu_threads=threads)
        except ImportError:
            print("faster-whisper is not installed (pip install -e '.[bench]'): its column stays empty")

    def __call__(self, audio: np.ndarray, rate: int) -> dict[str, str]:
        audio = resample(np.asarray(audio, np.float32), rate, 16_000) if rate != 16_000 else audio
        if len(audio) < 1600:
            audio = np.pad(audio, (0, 1600 - len(audio)))
        out = {"whisper": self.ours.transcribe(audio).text}
        if self.fw is not None:
            segments, _ = self.fw.transcribe(audio, beam_size=1, language="en", without_timestamps=True,
                                             vad_filter=False)
            out["faster-whisper"] = " ".join(s.text.strip() for s in segments)
        return out


def wer(refs: list[str], hyps: list[str]) -> float:
    return word_error_rate([normalize(r) for r in refs], [normalize(h) for h in hyps]).rate


def measure_voice(name: str, voice, texts: list[str], asr: Transcribers) -> dict:
    rate = voice.sample_rate
    first, stream_time, stream_audio, whole_time, whole_audio = [], 0.0, 0.0, 0.0, 0.0
    hyps: dict[str, list[str]] = {}
    voice.synthesize(texts[0])  # warm-up
    for text in texts:
        start = time.perf_counter()
        chunks = []
        for chunk in voice.synthesize(text, stream=True):
            if not chunks:
                first.append(time.perf_counter() - start)
            chunks.append(chunk)
        stream_time += time.perf_counter() - start
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
        stream_audio += len(audio) / rate
        for k, v in asr(audio, rate).items():
            hyps.setdefault(f"stream {k}", []).append(v)
        start = time.perf_counter()
        audio = voice.synthesize(text)
        whole_time += time.perf_counter() - start
        whole_audio += len(audio) / rate
        for k, v in asr(audio, rate).items():
            hyps.setdefault(f"whole {k}", []).append(v)
    row = {"voice": name, "sentences": len(texts), "audio_s": round(stream_audio, 1),
           "first_chunk_ms_median": round(1000 * statistics.median(first)),
           "first_chunk_ms_p90": round(1000 * sorted(first)[max(math.ceil(0.9 * len(first)) - 1, 0)]),
           "rtf_stream": round(stream_time / max(stream_audio, 1e-9), 3),
           "rtf_whole": round(whole_time / max(whole_audio, 1e-9), 3)}
    lm = getattr(voice, "lm", None)
    if lm is not None:
        row["ratio"] = f"{lm.config.text_chunk}:{lm.config.speech_chunk}"
        row["lm_layers"] = len(lm.decoder.layers)
    for k, v in hyps.items():
        row[f"wer {k}"] = round(wer(texts, v), 4)
    row["examples"] = [{"text": t, "heard": h} for t, h in zip(texts[:3], hyps.get("stream whisper", []),
                                                                 strict=False)]
    return row


def blurred(mel: torch.Tensor, frames: int) -> torch.Tensor:
    """Log-mel [T, 80] averaged over ``frames`` neighbouring frames: a known smear to read a
    model's mel error against (how much of it Whisper still understands)."""
    x = torch.nn.functional.pad(mel.T[None], (frames // 2, frames // 2), mode="replicate")
    return torch.nn.functional.avg_pool1d(x, frames, 1)[0].T


def prior_mel(flow, tokens: torch.Tensor) -> torch.Tensor:
    """The flow model's per-frame prior μ from the tokens alone, as a log-mel [T, 80]."""
    _, mu = flow.encode(flow.frame_tokens(tokens)[None], 0)
    return flow.denormalize(mu[0])


def resynthesis(name: str, voice, cache: str, limit: int, asr: Transcribers) -> list[dict]:
    """WER (and normalised-mel MSE against the recording) of each stage on recorded test audio."""
    from speechllm.tts.data import load_corpus

    test = load_corpus(cache, "test", tokens=True)
    index = [i for i, s in enumerate(test.speakers) if s.startswith("piper")][:limit]
    texts = [test.texts[i] for i in index]
    flow = voice.flow
    mels = {
        "vocoder on recorded mel": lambda i: test.mel[i].float(),
        "vocoder on recorded mel blurred over 5 frames": lambda i: blurred(test.mel[i].float(), 5),
        "vocoder on recorded mel blurred over 9 frames": lambda i: blurred(test.mel[i].float(), 9),
        "flow prior μ + vocoder on tokenizer tokens": lambda i: prior_mel(flow, test.tokens[i]),
    }
    makers = {"recording": lambda i: test.wav[i].float().numpy() / 32767,
              **{k: (lambda i, f=f: voice.vocoder(f(i).T[None])[0].numpy()) for k, f in mels.items()},
              "flow+vocoder on tokenizer tokens": lambda i: voice.synthesize_tokens(test.tokens[i])}
    def mse(label: str, i: int, audio: np.ndarray) -> float | None:
        if label not in mels:
            return None
        mel, ref = mels[label](i), test.mel[i].float()
        n = min(len(mel), len(ref))
        return float((flow.normalize(mel[:n]) - flow.normalize(ref[:n])).pow(2).mean())

    return stage_rows(name, index, texts, makers, asr, {"mel mse": mse})


ErrorFn = Callable[[str, int, np.ndarray], "float | None"]  # (stage, test item, its audio) -> error or None


def stage_rows(name: str, index: list[int], texts: list[str], makers: dict, asr: Transcribers,
               errors: dict[str, ErrorFn]) -> list[dict]:
    """One row per stage (``makers``: label -> audio of test item i at 16 kHz): WER by each ASR and, per
    entry of ``errors``, the mean of what it gives for the stage's items (where it gives one)."""
    rows = []
    for label, make in makers.items():
        hyps: dict[str, list[str]] = {}
        found: dict[str, list[float]] = {}
        with torch.no_grad():
            for i in index:
                audio = make(i)
                for k, v in asr(audio, 16_000).items():
                    hyps.setdefault(k, []).append(v)
                for key, error in errors.items():
                    if (e := error(label, i, audio)) is not None:
                        found.setdefault(key, []).append(e)
        rows.append({"voice": name, "input": label, "sentences": len(index),
                     **{f"wer {k}": round(wer(texts, v), 4) for k, v in hyps.items()},
                     **{k: round(statistics.mean(v), 4) for k, v in found.items()}})
    return rows


def acoustic_stages(name: str, voice, cache: str, limit: int, asr: Transcribers,
                    teacher: bool = True) -> list[dict]:
    """For a phoneme-route voice: WER of the teacher's test audio (distilled cache; ``teacher``), of the
    vocoder on the teacher's mel, and of the acoustic model's mel (the teacher's durations, then its own)
    through the vocoder; where the frames line up with the teacher's, the normalised-mel L1 of the acoustic
    model's mel and of the audio's own mel against the teacher's: where intelligibility and fidelity are
    lost."""
    from speechllm.tts.data import load_corpus
    from speechllm.tts.mel import mel_spectrogram

    test = load_corpus(cache, "test")
    index = [i for i, p in enumerate(test.phonemes) if len(p)][:limit]
    model = voice.model

    def timed(i: int, teacher: bool) -> torch.Tensor:  # [T, 80]
        durations = test.durations[i].float() if teacher else None
        return model.synthesize(test.phonemes[i].long(), voice.options.speed, durations).T

    mels = {"vocoder on the teacher's mel": lambda i: test.mel[i].float(),
            "acoustic model, teacher's durations": lambda i: timed(i, True),
            "acoustic model, own durations": lambda i: timed(i, False)}
    makers = {**({"teacher (recording)": lambda i: test.wav[i].float().numpy() / 32767} if teacher else {}),
              **{k: (lambda i, f=f: voice.vocoder(f(i).T[None])[0].numpy()) for k, f in mels.items()}}
    aligned = ("vocoder on the teacher's mel", "acoustic model, teacher's durations")

    def l1(label: str, i: int, audio: np.ndarray) -> float | None:
        if label != "acoustic model, teacher's durations":
            return None
        ref = test.mel[i].float()
        return float(((mels[label](i)[: len(ref)] - ref) / model.mel_std).abs().mean())

    def audio_l1(label: str, i: int, audio: np.ndarray) -> float | None:
        if label not in aligned:
            return None
        ref = test.mel[i].float()
        heard = mel_spectrogram(torch.from_numpy(audio)[None])[0].T[: len(ref)]
        return float(((heard - ref[: len(heard)]) / model.mel_std).abs().mean())

    return stage_rows(name, index, [test.texts[i] for i in index], makers, asr,
                      {"mel l1": l1, "audio mel l1": audio_l1})


def held_out_sentences(manifest: str | None, distilled: str | None) -> list[str]:
    """The test sentences: a tts corpus manifest's Piper rows, or a distilled cache's test split."""
    if manifest is None and distilled is not None:
        from speechllm.tts.data import load_corpus

        return list(dict.fromkeys(load_corpus(distilled, "test").texts))
    rows = read_manifest(manifest or REPO / "corpora/tts-1h/test.jsonl")
    return [r.text for r in rows if (r.speaker or "").startswith("piper") and r.text]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--voices", nargs="+", default=[DEFAULT_VOICE, PIPER_VOICE])
    parser.add_argument("--manifest", default=None,
                        help="tts corpus test manifest whose Piper rows are the sentences (default: the "
                             "--distilled cache's test sentences, else corpora/tts-1h/test.jsonl)")
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="flow-matching steps for own voices")
    parser.add_argument("--resynthesis", default=None, help="feature cache with test tokens (own voices)")
    parser.add_argument("--distilled", default=None,
                        help="distilled cache (speechllm data distill): stage WERs of a phoneme-route voice")
    parser.add_argument("--json", default=None, help="write the results here too")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from speechllm import tts

    texts = held_out_sentences(args.manifest, args.distilled)[: args.limit]
    asr = Transcribers(args.threads)
    results, stages = [], []
    for name in args.voices:
        voice = tts.load(name)
        if args.steps is not None and hasattr(voice, "options"):
            from dataclasses import replace

            voice.options = replace(voice.options, flow_steps=args.steps)
        results.append(measure_voice(name, voice, texts, asr))
        print(json.dumps({k: v for k, v in results[-1].items() if k != "examples"}), flush=True)
        if args.resynthesis and hasattr(voice, "flow") and not stages:  # flow + vocoder: once is enough
            stages += resynthesis(name, voice, args.resynthesis, args.limit, asr)
            print(json.dumps(stages), flush=True)
        if args.distilled and hasattr(voice, "model"):  # every phoneme-route voice; the teacher once
            first = not any(s["input"] == "teacher (recording)" for s in stages)
            stages += acoustic_stages(name, voice, args.distilled, args.limit, asr, teacher=first)
            print(json.dumps(stages), flush=True)
    cols = ["voice", "ratio", "wer stream faster-whisper", "wer stream whisper", "wer whole faster-whisper",
            "wer whole whisper", "first_chunk_ms_median", "first_chunk_ms_p90", "rtf_stream", "rtf_whole"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")
    if stages:
        cols = ["voice", "input", "wer faster-whisper", "wer whisper", "mel mse", "mel l1", "audio mel l1"]
        print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for r in stages:
            print("| " + " | ".join(str(r.get(c, "-")) for c in cols) + " |")
    if args.json:
        from speechllm.files import atomic_write_text

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, json.dumps({"threads": args.threads, "voices": results,
                                                 "stages": stages}, indent=2) + "\n")


if __name__ == "__main__":
    main()
