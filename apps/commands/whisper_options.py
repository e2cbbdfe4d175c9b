"""Whisper's decoding flags (``transcribe``, ``translate``) and the subtitle cue flags (``--format``)."""

from __future__ import annotations

import argparse

# WhisperTranscriber keyword -> its default here (what argparse gives when the flag is absent)
DEFAULTS = {"language": None, "temperature": None, "best_of": 1, "initial_prompt": None,
            "word_timestamps": False, "compression_ratio_threshold": 2.4, "logprob_threshold": -1.0,
            "no_speech_threshold": 0.6}


def temperatures(value: str) -> tuple[float, ...]:
    """``0`` or ``0,0.2,0.4``: the temperatures tried in turn."""
    try:
        values = tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: numbers separated by commas, e.g. 0,0.2,0.4") from None
    if not values or any(v < 0 or v > 2 for v in values):
        raise argparse.ArgumentTypeError(f"{value!r}: temperatures between 0 and 2")
    return values


def _threshold(value: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: a number, or none to turn the check off") from None


def add_whisper_options(parser: argparse.ArgumentParser, translating: bool = False) -> None:
    group = parser.add_argument_group("Whisper decoding")
    group.add_argument("--language", default=None, metavar="CODE",
                       help="spoken language (en, es, ...); default: detected per 30 s window by a "
                            "multilingual model, en for an English-only (.en) one (a speech-LLM tells "
                            "the Whisper it hears with)")
    if not translating:
        group.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                           help="translate: Whisper's own speech translation into English (multilingual "
                                "models)")
    group.add_argument("--temperature", type=temperatures, default=None, metavar="T[,T...]",
                       help="decoding temperature(s), tried in turn while a window's transcript fails the "
                            "two thresholds below; default 0,0.2,0.4,0.6,0.8,1 (Whisper's fallback, as "
                            "openai-whisper decodes); 0 = greedy/beam alone")
    group.add_argument("--best-of", type=int, default=1, metavar="N",
                       help="samples drawn at each temperature above 0, the most probable kept (default 1; "
                            "openai-whisper's CLI and faster-whisper draw 5)")
    group.add_argument("--compression-ratio-threshold", type=_threshold, default=2.4, metavar="X",
                       help="a transcript compressing better than this loops: retry hotter (default 2.4; "
                            "none: off)")
    group.add_argument("--logprob-threshold", type=_threshold, default=-1.0, metavar="X",
                       help="mean token log-probability below this: retry hotter (default -1.0; none: off)")
    group.add_argument("--no-speech-threshold", type=_threshold, default=0.6, metavar="P",
                       help="a window with P(no speech) above this and a low log-probability is silence "
                            "(default 0.6; none: off)")
    group.add_argument("--initial-prompt", default=None, metavar="TEXT",
                       help="text given to the decoder before each window: names, spellings, style")
    group.add_argument("--word-timestamps", action="store_true",
                       help="word times from cross-attention alignment: 'words' in each JSON segment, "
                            "subtitle cues cut at word times")


def add_cue_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("subtitles (--format srt/vtt)")
    group.add_argument("--max-line-chars", type=int, default=42, help="characters a subtitle line (42)")
    group.add_argument("--max-lines", type=int, default=2, help="lines a cue (2)")
    group.add_argument("--max-cue-seconds", type=float, default=7.0, help="seconds a cue stays (7)")
    group.add_argument("--highlight-words", action="store_true",
                       help="one cue per word with the word underlined (with --word-timestamps)")


def whisper_options(args: argparse.Namespace, is_speechlm: bool) -> dict:
    """The WhisperTranscriber keywords the user set; a speech-LLM takes only ``--language`` (told to
    the Whisper it hears with)."""
    given = {key: getattr(args, key) for key, default in DEFAULTS.items()
             if hasattr(args, key) and getattr(args, key) != default}
    task = getattr(args, "task", "transcribe")
    if is_speechlm:
        language = given.pop("language", None)
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"{flags}: Whisper decoding options; this model is a speech-LLM")
        if task != "transcribe":
            raise ValueError("--task translate is Whisper's; with a speech-LLM use speechllm translate")
        return {"language": language} if language else {}
    options = {key: getattr(args, key) for key in DEFAULTS if hasattr(args, key)}
    if options.get("temperature") is None:
        options.pop("temperature", None)
    if task != "transcribe":
        options["task"] = task
    return options


def cue_options(args: argparse.Namespace):
    from speechllm.apps.cues import CueOptions

    if getattr(args, "max_line_chars", None) is None:
        return None
    if args.highlight_words and not args.word_timestamps:
        raise ValueError("--highlight-words needs --word-timestamps")
    return CueOptions(args.max_line_chars, args.max_lines, args.max_cue_seconds, args.highlight_words)
