"""The FastAPI application: routes, the API key, and every error in OpenAI's error-object shape.

Status codes follow OpenAI and vLLM: 400 for a request the server refuses (the field named in
`param`), 401 for a missing or wrong key, 404 for an unknown model or route, 503 when the queue is
full, 500 when the engine has failed (and `/health` says so from then on).
"""

from __future__ import annotations

import json
import secrets
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from runtime.server.async_engine import AsyncEngine, EngineDead, QueueFull
from runtime.server.metrics import CONTENT_TYPE, ServerMetrics
from runtime.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
)
from runtime.server.serving import OpenAIServing, error_body


class AuthError(Exception):
    pass


class UnknownModel(Exception):
    pass


def _error(status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, kind, param, code), status_code=status)


def _validation_error(exc: ValidationError) -> JSONResponse:
    """pydantic's first complaint as one sentence naming the field, e.g. `temperature: Input should be
    a valid number`, with the field in `param`."""
    first = exc.errors()[0]
    # A union (prompt: str | list[int] | ...) reports one error per member, its loc ending in the
    # member's type name; only the field path is wanted.
    field = ".".join(str(p) for p in first["loc"] if not str(p).startswith(("list[", "str", "int", "function-")))
    if first["type"] == "extra_forbidden":
        return _error(400, f"Unrecognized request argument supplied: {field}", param=field)
    return _error(400, f"{field}: {first['msg']}" if field else first["msg"], param=field or None)


async def _parse(request: Request, model: type[BaseModel]) -> BaseModel:
    """The body as JSON whatever its Content-Type (curl -d sends form encoding), validated."""
    body = await request.body()
    if not body:
        raise RequestError("the request body is empty: send a JSON object")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed JSON body: {exc}") from None
    if not isinstance(data, dict):
        raise RequestError(f"the request body must be a JSON object, got {type(data).__name__}")
    return model.model_validate(data)


def build_app(engine: AsyncEngine, model_name: str, api_key: str | None = None) -> FastAPI:
    """The server for one engine, whose `run()` loop the caller drives on its own thread; the
    application stops it when it shuts down."""
    serving = OpenAIServing(engine, model_name)
    metrics = ServerMetrics(model_name, engine.stats)
    engine.on_finish = lambda stream, out: metrics.observe(stream.arrival, out)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:  # after uvicorn has drained the requests in flight
            engine.stop()

    app = FastAPI(title="ascendkit", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.encode(), api_key.encode()):
            raise AuthError("missing API key" if not header else "incorrect API key provided")

    def check_model(name: str | None) -> None:
        if name is not None and name != model_name:
            raise UnknownModel(f"the model `{name}` does not exist; this server serves `{model_name}`")

    @app.exception_handler(ValidationError)
    async def on_validation(_: Request, exc: ValidationError) -> JSONResponse:
        return _validation_error(exc)

    @app.exception_handler(RequestError)
    async def on_request_error(_: Request, exc: RequestError) -> JSONResponse:
        return _error(400, str(exc), param=exc.param)

    @app.exception_handler(AuthError)
    async def on_auth(_: Request, exc: AuthError) -> JSONResponse:
        return _error(401, str(exc), code="invalid_api_key")

    @app.exception_handler(UnknownModel)
    async def on_unknown_model(_: Request, exc: UnknownModel) -> JSONResponse:
        return _error(404, str(exc), param="model", code="model_not_found")

    @app.exception_handler(QueueFull)
    async def on_queue_full(_: Request, exc: QueueFull) -> JSONResponse:
        return _error(503, str(exc), kind="server_error", code="queue_full")

    @app.exception_handler(EngineDead)
    async def on_engine_dead(_: Request, exc: EngineDead) -> JSONResponse:
        return _error(500, str(exc), kind="server_error", code="engine_dead")

    @app.exception_handler(HTTPException)
    async def on_http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), code=None)

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(request: Request) -> Response:
        body = await _parse(request, CompletionRequest)
        check_model(body.model)
        return await serving.completions(body, request)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(request: Request) -> Response:
        body = await _parse(request, ChatCompletionRequest)
        check_model(body.model)
        return await serving.chat(body, request)

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict:
        # max_model_len as vLLM reports it; under "ascendkit", what `smoke` and `bench --server` need
        info = engine.info
        return {"object": "list", "data": [{
            "id": model_name, "object": "model", "created": created, "owned_by": "ascendkit",
            "max_model_len": info.max_model_len,
            "ascendkit": {"vocab_size": info.vocab_size, "dtype": info.dtype, "device": info.device,
                          "max_num_seqs": info.max_num_seqs, "kv_bytes_per_token": info.kv_bytes_per_token,
                          "full_kv_bytes_per_token": info.full_kv_bytes_per_token,
                          "attention_working_set_bytes": info.attention_working_set_bytes}}]}

    @app.get("/health")
    async def health() -> Response:
        if engine.error is not None:
            return _error(503, engine.error, kind="server_error", code="engine_dead")
        return Response(status_code=200)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    return app
