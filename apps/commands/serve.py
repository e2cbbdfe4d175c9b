"""``speechllm serve``: an OpenAI-compatible speech API on http://127.0.0.1:8000/v1.

The models and voices a client may use are fixed here, on the command line (each option may be
repeated); a client naming anything else gets 404, never a load of a host folder or hub id."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "OpenAI-compatible speech API: transcriptions, translations, speech, chat with audio (HTTP)"
KEY_ENV = "SPEECHLLM_API_KEY"


def register(parser: argparse.ArgumentParser) -> None:
    from speechllm.limits import MAX_AUDIO_SECONDS, MAX_UPLOAD_BYTES

    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument("--model", action="append", default=None, metavar="[ID=]MODEL",
                        help="zoo name, speech-LLM folder or Whisper folder to serve, optionally under an "
                             "id of your choice (whisper-1=whisper-tiny.en); repeatable (default: "
                             "whisper-tiny.en and the shipped speechllm-starter when installed)")
    parser.add_argument("--voice", action="append", default=None,
                        help="speechllm.tts voice for /v1/audio/speech (speechllm-joe, piper-joe, a TTS "
                             "folder); repeatable; 'none' serves no speech (default: speechllm-joe when "
                             "installed, else piper-joe)")
    parser.add_argument("--api-key", default=os.environ.get(KEY_ENV),
                        help=f"require 'Authorization: Bearer KEY' on every request (default: ${KEY_ENV})")
    parser.add_argument("--max-queue", type=int, default=64,
                        help="requests waiting per model (and speaking per voice) before 503")
    parser.add_argument("--batch-size", type=int, default=8, help="queued requests decoded as one batch")
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--segmenter", default="auto", choices=["auto", "vad", "fixed"],
                        help="long-audio segmentation: Silero VAD or fixed ≤30 s cuts at quiet points")
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_BYTES / 2**20,
                        help="largest recording a request may bring")
    parser.add_argument("--max-seconds", type=float, default=MAX_AUDIO_SECONDS,
                        help="longest recording a request may bring")
    parser.add_argument("--max-new-tokens", type=int, default=200, help="longest chat reply")
    parser.add_argument("--log-level", default="info",
                        choices=["critical", "error", "warning", "info", "debug"])


def build(args: argparse.Namespace):
    """The loaded :class:`~speechllm.apps.serve.Server` for these options (models load here)."""
    import speechllm
    from speechllm.apps.commands import preflight
    from speechllm.apps.serve import Limits, ModelOptions, ServedModel, ServedVoice, Server
    from speechllm.apps.serve.models import check_unique, default_voice, public_id

    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port}: must be 1..65535")
    if args.max_queue < 1 or args.batch_size < 1 or args.beam_size < 1:
        raise ValueError("--max-queue, --batch-size and --beam-size must be at least 1")
    if args.api_key is not None and not args.api_key.strip():
        raise ValueError("--api-key is empty")
    limits = Limits(max_upload_bytes=int(args.max_upload_mb * 2**20), max_seconds=args.max_seconds,
                    max_new_tokens=args.max_new_tokens)
    preflight.check_device(args.device)
    specs = args.model or list(dict.fromkeys([speechllm.default_model("transcribe"),
                                              speechllm.default_model("translate")]))
    check_unique([public_id(s)[0] for s in specs], "models")
    voices = [v for v in (args.voice or [default_voice()]) if v != "none"]
    options = ModelOptions(device=args.device, batch_size=args.batch_size, beam_size=args.beam_size,
                           segmenter=args.segmenter, max_queue=args.max_queue)
    models = [ServedModel.load(spec, options) for spec in specs]
    loaded = [ServedVoice.load(name, args.max_queue) for name in dict.fromkeys(voices)]
    return Server(models, loaded, limits, args.api_key)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from speechllm.apps.serve import create_app

    server = build(args)
    try:
        names = ", ".join([*server.models, *(f"voice {v}" for v in server.voices)])
        print(f"speechllm serve: http://{args.host}:{args.port}/v1 ({names})"
              f"{'; API key required' if server.api_key else ''}", file=sys.stderr)
        uvicorn.run(create_app(server), host=args.host, port=args.port, log_level=args.log_level)
    finally:
        server.close()
    return 0
