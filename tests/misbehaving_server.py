"""A small OpenAI-compatible server that misbehaves on purpose, for the endpoint tools' failure cases:
a key it requires, a model it does not serve (404), a 5xx in the middle of a load, a stream that stops
without a finish_reason or `data: [DONE]`. It runs for real (uvicorn on 127.0.0.1, its own thread).

Its models: "steady" answers every request; "flaky" answers HTTP 500 to every third completion;
"cut" streams two chunks and closes the connection; "html" answers completions with a web page (200). Answers are a fixed text, one word a "token"; its
/tokenize (vLLM's shape) counts words, so `usage` and /tokenize agree.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from typing import Self

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

KEY = "s3cret"
MODELS = ("steady", "flaky", "cut", "html")
WORDS = ["Paris", "is", "the", "capital", "of", "France", "and", "its", "largest", "city", "by", "far"]


def _app() -> FastAPI:
    app = FastAPI()
    counter = itertools.count(1)

    def refused(request: Request) -> JSONResponse | None:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return JSONResponse({"error": {"message": "Invalid API key", "type": "invalid_request_error"}},
                                status_code=401)
        return None

    @app.get("/v1/models")
    async def models(request: Request):
        return refused(request) or {"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]}

    async def complete(request: Request, chat: bool):
        body = await request.json()
        if (no := refused(request)) is not None:
            return no
        model = body.get("model")
        if model not in MODELS:
            return JSONResponse({"error": {"message": f"The model `{model}` does not exist."}}, status_code=404)
        if model == "html":  # a proxy's page where the API should be
            return HTMLResponse("<html><body>Service temporarily unavailable</body></html>")
        if model == "flaky" and next(counter) % 3 == 0:
            return JSONResponse({"error": {"message": "CUDA error: an illegal memory access"}}, status_code=500)
        n = min(int(body.get("max_tokens", 16)), len(WORDS))
        words = [(" " if i else "") + w for i, w in enumerate(WORDS[:n])]
        prompt = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
        asked = len(prompt.split()) if isinstance(prompt, str) else len(prompt)
        asked += 3 if chat else 0
        usage = {"prompt_tokens": asked, "completion_tokens": n, "total_tokens": asked + n}
        reason = "length"
        if not body.get("stream"):
            text = "".join(words)
            choice = {"index": 0, "finish_reason": reason,
                      **({"message": {"role": "assistant", "content": text}} if chat else {"text": text})}
            return {"object": "chat.completion" if chat else "text_completion", "choices": [choice], "usage": usage}

        def chunk(piece: str, finish: str | None = None) -> str:
            choice = ({"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece})
            choice["finish_reason"] = finish
            return f"data: {json.dumps({'choices': [choice]})}\n\n"

        def stream():
            for i, piece in enumerate(words):
                if model == "cut" and i == 2:
                    return  # the connection closes: no finish_reason, no [DONE]
                time.sleep(0.002)
                yield chunk(piece)
            yield chunk("", reason)
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.post("/tokenize")
    async def tokenize(request: Request):  # vLLM's shape; a word is a token, a chat prompt 3 more
        body = await request.json()
        if (no := refused(request)) is not None:
            return no
        text = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
        count = len(text.split()) + (3 if "messages" in body else 0)
        return {"count": count, "max_model_len": 64, "tokens": list(range(count))}

    @app.post("/v1/completions")
    async def completions(request: Request):
        return await complete(request, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        return await complete(request, chat=True)

    return app


class MisbehavingServer:
    """`with MisbehavingServer() as server:` serves on `server.url` until the block ends."""

    def __enter__(self) -> Self:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(_app(), log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
