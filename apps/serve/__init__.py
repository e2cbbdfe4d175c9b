"""``speechllm serve``: an OpenAI-compatible speech API over HTTP (FastAPI + uvicorn).

* :mod:`.app`: what is served (fixed at start), bearer-token checks, ``/v1/models``, the app.
* :mod:`.audio_routes`: transcriptions, translations (multipart uploads) and speech (streamed audio).
* :mod:`.chat_routes`: chat completions with ``input_audio``, streamed as server-sent events.
* :mod:`.workers`: the bounded request queue and a batching worker thread per model.
* :mod:`.models`: the served models and voices, and the batch runners (product paths only).
* :mod:`.inputs`, :mod:`.formats`, :mod:`.errors`: request checks and caps, response bodies,
  OpenAI-style errors.
"""

from speechllm.apps.serve.app import SPEECH_MODEL, Server, create_app
from speechllm.apps.serve.inputs import Limits
from speechllm.apps.serve.models import ModelOptions, ServedModel, ServedVoice

__all__ = ["SPEECH_MODEL", "Limits", "ModelOptions", "ServedModel", "ServedVoice", "Server", "create_app"]
