"""The ASGI app: the routers behind auth, our errors as JSON, /healthz and /metrics.

`create_app(runtime)` is the whole server; `sdxs-rt serve` runs it under uvicorn, and the Ray
Serve deployment (`ray_app`) runs the same app in each replica.
"""

from __future__ import annotations

import base64
import binascii
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdxs_rt import __version__
from sdxs_rt.errors import EXIT_UNEXPECTED, EXIT_USAGE, SdxsError
from sdxs_rt.serve import a1111, jobs_api, openai_images
from sdxs_rt.serve.config import Auth
from sdxs_rt.serve.http_errors import (
    BAD_LENGTH,
    INVALID_JSON,
    INVALID_REQUEST,
    TOO_LARGE,
    HttpKind,
    JobFailed,
    Unauthorized,
    error_body,
    kind_of,
)
from sdxs_rt.serve.metrics import CONTENT_TYPE
from sdxs_rt.serve.runtime import ServerRuntime, runtime_of

log = logging.getLogger(__name__)


def create_app(runtime: ServerRuntime, *, manage_runtime: bool = True) -> FastAPI:
    """The server over `runtime`; with `manage_runtime` the app starts the queue at startup and
    applies the shutdown rule (runtime.close) when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if manage_runtime:
            runtime.start()
        try:
            yield
        finally:
            if manage_runtime:
                runtime.close()

    app = FastAPI(
        title="sdxs-rt",
        version=__version__,
        summary="SDXS text-to-image: A1111 and OpenAI image APIs, and a job queue",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    add_error_handlers(app)
    # Our own limit, not FastAPI's max_body_size: that one answers 413 in plain text.
    app.add_middleware(BodyLimit, max_bytes=runtime.config.limits.max_body_bytes)
    app.add_middleware(AuthGate)  # outermost: no body is read before the credentials pass
    app.include_router(a1111.router)
    app.include_router(openai_images.router)
    app.include_router(jobs_api.router)
    app.add_api_route("/healthz", healthz, methods=["GET"], tags=["server"])
    app.add_api_route("/metrics", metrics, methods=["GET"], tags=["server"])
    return app


async def healthz(request: Request) -> JSONResponse:
    """Open without auth, for load balancers; 503 while shutting down."""
    runtime = runtime_of(request)
    body = {
        "status": "shutting_down" if runtime.shutting_down else "ok",
        "model": runtime.model_title,
        "backend": runtime.pipe.info.get("backend"),
        "device": runtime.pipe.info.get("device"),
        "queue_depth": len(runtime.queue.pending()),
        "running": runtime.queue.running is not None,
    }
    return JSONResponse(body, status_code=503 if runtime.shutting_down else 200)


async def metrics(request: Request) -> Response:
    return Response(runtime_of(request).metrics.render(), media_type=CONTENT_TYPE)


# -- auth -----------------------------------------------------------------------------------

# Open without credentials: the load balancers' probe and the API docs.
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class AuthGate:
    """The one place credentials are checked: first, before routing and before the body is
    read, so a request without them gets 401 whatever its body (a route dependency would run
    only after FastAPI parsed the body, answering 400/422 to an unauthenticated bad body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :] or "/"
            if path not in OPEN_PATHS:
                request = Request(scope)
                try:
                    await require_auth(request)
                except Unauthorized as exc:
                    response = await on_sdxs_error(request, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


async def require_auth(request: Request) -> None:
    auth: Auth = runtime_of(request).config.auth
    if not auth.enabled:
        return
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer" and any(_same(value, key) for key in auth.api_keys):
        return
    if scheme.lower() == "basic" and _basic_matches(value, auth):
        return
    raise Unauthorized(
        "this server needs credentials: an 'Authorization: Bearer KEY' header (--api-key) "
        "or HTTP Basic user:pass (--api-auth)"
    )


def _basic_matches(value: str, auth: Auth) -> bool:
    try:
        user, _, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return any(_same(user, u) & _same(password, p) for u, p in auth.basic)


def _same(given: str, expected: str) -> bool:
    return secrets.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


# -- body limit -----------------------------------------------------------------------------


class BodyTooLarge(HTTPException):
    """Raised while a route reads a body past the limit (a body without Content-Length)."""

    def __init__(self) -> None:
        super().__init__(status_code=413)


class BodyLimit:
    """413 for a body over `max_bytes`: at once when Content-Length says so, else as soon as
    the bytes read pass it. Either way the answer is our JSON error."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Request(scope).headers.get("content-length", "0").strip()
        if not length.isdigit() or int(length) > self.max_bytes:
            request = Request(scope)
            if length.isdigit():
                response = too_large(request, self.max_bytes)
            else:
                message = "the Content-Length header is not a number"
                response = error_response(request, BAD_LENGTH, message, EXIT_USAGE)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge
            return message

        await self.app(scope, limited, send)


def too_large(request: Request, max_bytes: int) -> JSONResponse:
    message = f"the request body is larger than this server's limit of {max_bytes} bytes"
    return error_response(request, TOO_LARGE, message, EXIT_USAGE)


# -- errors ---------------------------------------------------------------------------------


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SdxsError, on_sdxs_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, on_http_exception)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, on_unexpected)


def error_response(
    request: Request, kind: HttpKind, message: str, code: int, *, count: bool = True
) -> JSONResponse:
    headers = {}
    if kind.status == 429:
        headers["Retry-After"] = str(runtime_of(request).retry_after_seconds())
    if kind.status == 401:
        headers["WWW-Authenticate"] = 'Bearer, Basic realm="sdxs-rt"'
    if count:
        runtime_of(request).metrics.count_error_kind(kind.kind)
    return JSONResponse(error_body(kind, message, code), status_code=kind.status, headers=headers)


async def on_sdxs_error(request: Request, exc: SdxsError) -> JSONResponse:
    counted = isinstance(exc, JobFailed)  # counted when the job failed
    return error_response(request, kind_of(exc), str(exc), exc.exit_code, count=not counted)


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return error_response(
            request, INVALID_JSON, "the request body is not valid JSON", EXIT_USAGE
        )
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    message = f"{where}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more)"
    return error_response(request, INVALID_REQUEST, message, EXIT_USAGE)


async def on_http_exception(request: Request, exc: HTTPException) -> JSONResponse:
    if exc.status_code == 413:
        return too_large(request, runtime_of(request).config.limits.max_body_bytes)
    kind = HttpKind(exc.status_code, "not_found" if exc.status_code == 404 else "http_error")
    return error_response(request, kind, str(exc.detail), EXIT_USAGE)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    message = f"unexpected {type(exc).__name__}: {' '.join(str(exc).split())[:200]}"
    return error_response(request, kind_of(exc), message, EXIT_UNEXPECTED)
