"""speechllm: speech applications on one small quantized LLM.

    import speechllm
    model = speechllm.load("whisper-tiny.en")   # zoo name, local folder or Hugging Face id
    print(model.transcribe("examples/weather_awb.flac").text)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:
    from speechllm.transcriber import WhisperTranscriber


def load(name_or_dir: str = "whisper-tiny.en", device: str | None = None, **options) -> WhisperTranscriber:
    """Load a speech-to-text model by zoo name, folder or Hugging Face id.

    Options (``beam_size``, ``batch_size``, ``dtype``) go to the transcriber.
    """
    from speechllm.transcriber import WhisperTranscriber

    return WhisperTranscriber(name_or_dir, device=device, **options)
