"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

Routes raise :class:`APIError`; the handlers installed by :func:`install` turn it, FastAPI's own
404/405 and anything unexpected into that body. Messages name the client's own inputs (an upload's
file name, a field), never a path on the host. :class:`BodyLimit` refuses an oversized request
body (413) from its Content-Length header, or as soon as more bytes arrive than allowed.
"""

from __future__ import annotations

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger("speechllm.serve")

INVALID = "invalid_request_error"


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = INVALID, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def error_body(error: BaseException, what: str) -> dict:
    """The body of an error met while a response was streaming: an APIError's own, else a 500's
    (``what`` failed) that names only the exception's type."""
    if not isinstance(error, APIError):
        error = APIError(500, f"{what} failed ({type(error).__name__})", type="server_error")
    return error.body()


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def too_large(message: str, param: str | None = None) -> APIError:
    return APIError(413, message, param=param, code="too_large")


def unknown_model(name: str, served: list[str]) -> APIError:
    return APIError(404, f"The model {name[:100]!r} is not served here (served: {', '.join(served)})",
                    param="model", code="model_not_found")


def queue_full(what: str) -> APIError:
    return APIError(503, f"{what} is busy: its request queue is full; retry shortly", type="server_error",
                    code="queue_full", headers={"Retry-After": "1"})


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kinds = {404: "not_found", 405: "method_not_allowed"}
    error = APIError(exc.status_code, str(exc.detail), code=kinds.get(exc.status_code))
    return error.response()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error in %s %s", request.method, request.url.path)
    return APIError(500, f"internal server error ({type(exc).__name__}); the server log has the details",
                    type="server_error").response()


def install(app) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 and is not read further."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, self._error())
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise self._error()  # inside a route: rendered by the APIError handler
            return message

        await self.app(scope, limited, send)

    def _error(self) -> APIError:
        return too_large(f"request body over the limit of {self.limit / 2**20:.1f} MiB")


async def _send_error(send, error: APIError) -> None:
    body = json.dumps(error.body()).encode()
    await send({"type": "http.response.start", "status": error.status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
