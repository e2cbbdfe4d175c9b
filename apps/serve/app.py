"""The application: what is served (fixed at start), the routes, bearer-token checks, errors, caps."""

from __future__ import annotations

import hmac
import time
from collections.abc import Iterable

from fastapi import APIRouter, Depends, FastAPI, Request

from speechllm.apps.serve.errors import APIError, BodyLimit, bad_request, install, unknown_model
from speechllm.apps.serve.inputs import Limits
from speechllm.apps.serve.models import ServedModel, ServedVoice, check_unique

SPEECH_MODEL = "speechllm-tts"  # the id /v1/audio/speech answers to; its voices are picked by `voice`


class Server:
    """Loaded models and voices, the caps, the API key: everything a route may use."""

    def __init__(self, models: Iterable[ServedModel], voices: Iterable[ServedVoice] = (),
                 limits: Limits | None = None, api_key: str | None = None):
        self.models = {m.id: m for m in models}
        self.voices = {v.name: v for v in voices}
        check_unique([*self.models, *([SPEECH_MODEL] if self.voices else [])], "models")
        self.limits, self.api_key = limits or Limits(), api_key or None
        self.created = int(time.time())

    def model(self, name: str | None) -> ServedModel:
        if not name:
            raise bad_request("model is required", param="model")
        if name not in self.models:
            raise unknown_model(name, list(self.models))
        return self.models[name]

    def voice(self, model: str | None, name: str | None) -> ServedVoice:
        if not model:
            raise bad_request("model is required", param="model")
        if model != SPEECH_MODEL or not self.voices:
            raise unknown_model(model, [SPEECH_MODEL] if self.voices else [])
        name = name or next(iter(self.voices))
        if name not in self.voices:
            raise bad_request(f"voice {name[:60]!r} is not served here (voices: {', '.join(self.voices)})",
                              param="voice")
        return self.voices[name]

    def listing(self) -> list[dict]:
        entries = [{"id": m.id, "kind": m.kind} for m in self.models.values()]
        if self.voices:
            entries.append({"id": SPEECH_MODEL, "kind": "tts", "voices": list(self.voices)})
        return [{"object": "model", "created": self.created, "owned_by": "speechllm", **e} for e in entries]

    def close(self) -> None:
        for model in self.models.values():
            model.worker.close()


async def require_key(request: Request) -> None:
    key = request.app.state.serve.api_key
    if key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
        raise APIError(401, "missing or wrong API key: send it as 'Authorization: Bearer KEY'",
                       code="invalid_api_key")


models_router = APIRouter()


@models_router.get("/v1/models")
async def list_models(request: Request) -> dict:
    return {"object": "list", "data": request.app.state.serve.listing()}


@models_router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict:
    listing = {entry["id"]: entry for entry in request.app.state.serve.listing()}
    if model_id not in listing:
        raise unknown_model(model_id, list(listing))
    return listing[model_id]


def create_app(server: Server) -> FastAPI:
    from speechllm.apps.serve.audio_routes import router as audio_router
    from speechllm.apps.serve.chat_routes import router as chat_router

    app = FastAPI(title="speechllm", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.serve = server
    install(app)
    for router in (models_router, audio_router, chat_router):
        app.include_router(router, dependencies=[Depends(require_key)])
    app.add_middleware(BodyLimit, limit=server.limits.max_body_bytes)
    return app
