"""``speechllm tts``: text (``--text`` or stdin) → an audio file; ``--stream`` writes it chunk by chunk."""

from __future__ import annotations

import argparse
import sys
import time

from speechllm.apps.commands.weights import add_weights_option
from speechllm.zoo import PIPER_VOICE

HELP = f"speak text into an audio file (the project's own voice, or --voice {PIPER_VOICE} / a model folder)"


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--text", default=None, help="what to say (default: read standard input)")
    parser.add_argument("--output", "-o", required=True, help="audio file to write (.wav, .flac, .ogg, .mp3)")
    parser.add_argument("--stream", action="store_true",
                        help="synthesize chunk by chunk, appending each chunk to the file as it comes")
    parser.add_argument("--voice", default=None,
                        help="voice name, TTS model folder, Piper .onnx or speaker id (espeak:en-gb+m3) "
                             f"(default: speechllm-joe, or {PIPER_VOICE} where its weights are missing)")
    parser.add_argument("--speed", type=float, default=None,
                        help="speaking rate, 0.25-4 (1.0; 1.2 is 20%% faster): the own voice, Piper voices, "
                             "espeak speakers")
    parser.add_argument("--steps", type=int, default=None, help="flow-matching ODE steps (LM + flow voices)")
    parser.add_argument("--seed", type=int, default=None, help="sampling seed (own voices)")
    parser.add_argument("--vocoder", choices=["vocos", "griffin-lim"], default=None,
                        help="griffin-lim: the weightless fallback vocoder (own voices)")
    add_weights_option(parser, "weights of the text-speech LM's linears (own voices; auto: int4)",
                       old_flags=["--lm-quant"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    import soundfile as sf

    from speechllm.apps.commands import preflight

    text = args.text if args.text is not None else sys.stdin.read()
    out = preflight.check_output_file(args.output, example="speech.wav")  # before torch: fails at once
    fmt = out.suffix.lstrip(".").upper() or "WAV"
    if fmt not in sf.available_formats():
        raise ValueError(f"--output {out}: unknown audio format {out.suffix!r} "
                         "(use .wav, .flac, .ogg or .mp3)")
    if args.speed is not None and not 0.25 <= args.speed <= 4.0:
        raise ValueError(f"--speed {args.speed}: give a rate between 0.25 and 4")
    if args.voice is not None and Path(args.voice).expanduser().is_dir():
        preflight.check_model_folder(Path(args.voice).expanduser())
    import torch  # only now: two seconds and more to import, with the model code below

    from speechllm import tts
    from speechllm.tts.synthesize import SpeechTTS

    tts.prepare_text(text)  # bad text fails here, before any model loads
    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {}
    if args.vocoder:
        kwargs["vocoder"] = args.vocoder
    if args.quant != "auto":
        kwargs["quant"] = args.quant
    name = args.voice or tts.default_voice()
    if args.voice is None and name != tts.DEFAULT_VOICE:
        print(f"note: the {tts.DEFAULT_VOICE} weights are not installed; speaking with {name}",
              file=sys.stderr)
    voice = tts.load(name, **kwargs)
    if isinstance(voice, SpeechTTS) and (args.steps is not None or args.seed is not None):
        from dataclasses import replace

        changes = {k: v for k, v in (("flow_steps", args.steps), ("seed", args.seed)) if v is not None}
        voice.options = replace(voice.options, **changes)
    if args.speed is not None:
        voice = tts.at_speed(voice, args.speed)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not args.stream:
        from speechllm.audio import write_audio

        audio = voice.synthesize(text)
        write_audio(out, audio, voice.sample_rate)
        seconds = len(audio) / voice.sample_rate
        first = None
    else:
        from speechllm.files import atomic_path

        samples, first = 0, None
        with atomic_path(out, durable=False) as tmp:  # a failure (or Ctrl-C) leaves no temp file behind
            with sf.SoundFile(str(tmp), "w", voice.sample_rate, 1, format=fmt) as f:
                for chunk in voice.synthesize(text, stream=True):
                    if first is None:
                        first = time.perf_counter() - start
                    f.write(np.asarray(chunk, dtype=np.float32))
                    samples += len(chunk)
        seconds = samples / voice.sample_rate
    elapsed = time.perf_counter() - start
    rtf = elapsed / seconds if seconds else float("nan")
    note = f", first audio after {first * 1000:.0f} ms" if first is not None else ""
    print(f"{out}: {seconds:.2f} s of audio at {voice.sample_rate} Hz in {elapsed:.2f} s "
          f"(RTF {rtf:.2f}{note})", file=sys.stderr)
    return 0
