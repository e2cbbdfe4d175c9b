"""speechllm: speech applications on one small quantized LLM.

    import speechllm
    model = speechllm.load()                       # default transcriber (Whisper tiny.en for now)
    print(model.transcribe("examples/weather_awb.flac").text)
    speechllm.load(task="translate").transcribe("clip_es.flac").text
    speechllm.load("whisper-tiny.en")              # zoo name, local folder or Hugging Face id
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from speechllm.zoo import DEFAULT_ASR as BASELINE
from speechllm.zoo import STARTER

if TYPE_CHECKING:
    from speechllm.transcriber import WhisperTranscriber

__version__ = "0.1.0"

# The model a task runs on when none is named (docs/speech-llm.md has the measurements): the starter
# for every task (translate, questions, free instructions); transcription stays on Whisper tiny.en's
# own decoder (timestamps, subtitles, language detection) until the starter adds to it.
STARTER_TRANSCRIBES = False


def _installed(name: str, task: str | None = None) -> bool:
    """Whether a zoo entry (and, for a speech-LLM folder, the zoo models it names, with the Whisper
    that hears ``task`` when its ``hearing_models`` names one) is on this machine."""
    import json

    from speechllm.zoo import ZOO

    folder = ZOO[name].bundle.folder() if ZOO[name].bundle else None
    if folder is None:
        return False
    config = folder / "config.json"
    named = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    names = [named.get(key) for key in ("asr", "encoder", "llm")]
    names.append((named.get("hearing_models") or {}).get(task))
    parts = [part for part in names if part in ZOO]
    return all(ZOO[part].bundle is None or ZOO[part].bundle.folder() is not None for part in parts)


def default_model(task: str = "transcribe") -> str:
    """The model ``task`` runs on when none is named: the starter (for transcription only when
    ``STARTER_TRANSCRIBES``) where it and what it needs for the task are installed, else the
    Whisper baseline."""
    if task == "transcribe" and not STARTER_TRANSCRIBES:
        return BASELINE
    return STARTER if _installed(STARTER, task) else BASELINE


def speechlm_path(name_or_dir: str) -> Path | None:
    """:func:`speechllm.speechlm.io.speechlm_path`, imported on first use (a light ``import speechllm``)."""
    from speechllm.speechlm.io import speechlm_path

    return speechlm_path(name_or_dir)


def load(name_or_dir: str | None = None, device: str | None = None, task: str = "transcribe",
         prompt: str | None = None, **options) -> WhisperTranscriber:
    """Load a speech model by zoo name, folder or Hugging Face id (default: :func:`default_model`).

    A speech-LLM folder (``speechllm finetune``'s output) or zoo entry gives a
    :class:`~speechllm.speechlm.SpeechLLMTranscriber` doing ``task`` ("transcribe", "translate",
    "spoken-question", "passage-question" with ``prompt``, ...); anything else is a Whisper model,
    which transcribes and (a multilingual one) translates into English. Options (``beam_size``,
    ``batch_size``, ``segmenter``, ``language``, ``word_timestamps``, ...) go to the transcriber.
    """
    name = name_or_dir or default_model(task)
    folder = speechlm_path(name)
    if folder is not None:
        from speechllm.speechlm.transcriber import SpeechLLMTranscriber

        options.pop("dtype", None)  # the Whisper baseline's option
        return SpeechLLMTranscriber(str(folder), device=device, task=task, prompt=prompt, **options)
    if task != "transcribe" and not (task == "translate" and multilingual_whisper(name)):
        raise ValueError(f"{name} is a speech recognition model; {task!r} needs a speech-LLM "
                         f"(--model {STARTER} or a folder written by speechllm finetune)"
                         + (" or a multilingual Whisper (whisper-base)" if task == "translate" else ""))
    from speechllm.transcriber import WhisperTranscriber

    target = options.pop("target", "English")
    if task == "translate" and target.strip().lower() not in ("en", "english"):
        raise ValueError(f"Whisper translates into English only, not {target}; for other languages "
                         f"use a speech-LLM (--model {STARTER})")
    return WhisperTranscriber(name, device=device, task=task, **options)


def multilingual_whisper(name_or_dir: str) -> bool:
    """Whether ``name_or_dir`` is a multilingual Whisper (it translates into English natively)."""
    from speechllm.whisper.weights import is_multilingual
    from speechllm.zoo import ZOO, resolve

    entry = ZOO.get(name_or_dir)
    if entry is not None and entry.kind != "asr":
        return False
    try:
        return is_multilingual(resolve(name_or_dir).path)
    except (OSError, ValueError, KeyError):
        return False
