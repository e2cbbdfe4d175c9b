"""``speechllm chat [--model MODEL_DIR]``: the voice chat in the browser, on http://127.0.0.1:7860.

What the page may switch to is fixed here: the models and voices given on the command line (each
option may be repeated; the first is the one loaded) besides the zoo's speech-LLMs and the named
voices. A client cannot load any other folder, hub id or file."""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys

HELP = "voice chat with a speech-LLM in the browser (Gradio; pip install 'speechllm[chat]')"


def register(parser: argparse.ArgumentParser) -> None:
    from speechllm.apps.chat.engine import MAX_TURN_SECONDS, ChatOptions
    from speechllm.apps.chat.turns import TurnOptions
    from speechllm.apps.chat.voices import FALLBACK_VOICE, VOICES
    from speechllm.apps.commands.weights import add_weights_option

    defaults = ChatOptions()
    from speechllm import STARTER

    parser.add_argument("--model", action="append", default=None,
                        help=f"speech-LLM folder (from speechllm finetune) or zoo name (default {STARTER}); "
                             "repeat it to offer more models in the page (the first is loaded)")
    parser.add_argument("--voice", action="append", default=None,
                        help=f"{', '.join(VOICES)}, a corpus speaker id (flite:slt, espeak:en-gb+m3), a "
                             "Piper .onnx, or a speechllm.tts voice name (default: the project's own voice "
                             f"when installed, else {FALLBACK_VOICE}); repeat it to offer more voices in "
                             "the page (the first is the default)")
    add_weights_option(parser, "LLM weights (auto: as the model folder says)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=None, help="default: the first free port from 7860")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest accepted upload")
    parser.add_argument("--max-seconds", type=float, default=defaults.max_seconds,
                        help=f"longest spoken turn accepted (at most {MAX_TURN_SECONDS:g})")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens,
                        help="longest answer (changeable in the page)")
    parser.add_argument("--end-of-turn-ms", type=float, default=TurnOptions().end_ms,
                        help="hands-free: silence (ms) that ends your turn and starts the answer")
    parser.add_argument("--no-remember-speech", dest="remember_speech", action="store_false",
                        help="do not transcribe spoken turns for the history (saves one model pass per turn)")


def run(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("gradio") is None:
        raise RuntimeError("the chat needs Gradio: pip install 'speechllm[chat]'")
    from speechllm import STARTER
    from speechllm.apps.chat.engine import MAX_TURN_SECONDS, ChatOptions
    from speechllm.apps.chat.turns import TurnOptions
    from speechllm.apps.chat.ui import ChatApp, ServerOptions, launch
    from speechllm.apps.commands.preflight import check_device

    check_device(args.device)
    if not 0 < args.max_seconds <= MAX_TURN_SECONDS:
        raise ValueError(f"--max-seconds must be above 0 and at most {MAX_TURN_SECONDS:g}")
    if args.max_upload_mb <= 0 or args.max_new_tokens < 1 or args.end_of_turn_ms <= 0:
        raise ValueError("--max-upload-mb, --max-new-tokens and --end-of-turn-ms must be positive")
    options = ChatOptions(max_new_tokens=args.max_new_tokens, max_seconds=args.max_seconds,
                          remember_speech=args.remember_speech)
    models, voices = args.model or [STARTER], args.voice or [None]
    app = ChatApp(models[0], quant=args.quant, voice=voices[0], device=args.device, options=options,
                  models=models[1:], voices=[v for v in voices[1:] if v],
                  turn_options=TurnOptions(end_ms=args.end_of_turn_ms))
    # a plain `kill` stops the server like Ctrl-C does, so its temporary folder goes with it
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    launch(app, ServerOptions(host=args.host, port=args.port, max_upload_mb=args.max_upload_mb))
    return 0
