"""From an OpenAI request to engine requests and back: tokenizing, the response and chunk shapes,
streaming deltas, logprobs, usage, and aborting what a departed client no longer wants.

The shapes are OpenAI's (`text_completion`, `chat.completion`, `chat.completion.chunk`), field for
field, so the `openai` client parses them; the streaming protocol is server-sent events ending in
`data: [DONE]`, with a final usage chunk when `stream_options.include_usage` is set.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from runtime.engine.llm_engine import RequestOutput, chat_token_ids
from runtime.sampling_params import SamplingParams
from runtime.server.async_engine import AsyncEngine, EngineDead, RequestStream
from runtime.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    RequestError,
)


@dataclass
class _Cursor:
    """How much of one choice has been sent. While a request runs, the last `hold` characters (the
    longest stop string less one) are held back: they might turn out to be the start of a stop
    string, which must never reach the client (vLLM holds back the same way)."""

    hold: int
    text: int = 0
    tokens: int = 0

    def advance(self, out: RequestOutput) -> tuple[str, int]:
        """The text not yet sent, and the index of the first token not yet sent."""
        end = len(out.text) if out.finished else max(self.text, len(out.text) - self.hold)
        delta, self.text = out.text[self.text:end], end
        first, self.tokens = self.tokens, len(out.token_ids)
        return delta, first


class OpenAIServing:
    def __init__(self, engine: AsyncEngine, model_name: str) -> None:
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = engine.tokenizer

    # -- prompts -----------------------------------------------------------------------------------
    def _check(self, ids: list[int], params: SamplingParams, param: str) -> list[int]:
        try:
            self.engine.check_request(ids, params)
        except ValueError as exc:
            raise RequestError(str(exc), param) from None
        return ids

    def completion_prompts(self, request: CompletionRequest, params: SamplingParams) -> list[list[int]]:
        prompts = []
        for prompt in request.prompts():
            if isinstance(prompt, str):
                if self.tokenizer is None:
                    raise RequestError("this model has no tokenizer: send the prompt as token ids", "prompt")
                prompt = self.tokenizer.encode(prompt)
            prompts.append(self._check(prompt, params, "prompt"))
        return prompts

    def chat_prompt(self, request: ChatCompletionRequest, params: SamplingParams) -> list[int]:
        if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
            raise RequestError("this model has no chat template: use /v1/completions", "messages")
        try:
            ids = chat_token_ids(self.tokenizer, request.conversation(), request.add_generation_prompt)
        except Exception as exc:  # noqa: BLE001 - a template's raise_exception ("roles must alternate")
            raise RequestError(f"the chat template refused the messages: {exc}", "messages") from None
        return self._check(ids, params, "messages")

    # -- responses ---------------------------------------------------------------------------------
    async def completions(self, request: CompletionRequest, http: Request) -> Response:
        params = request.sampling_params()
        prompts = self.completion_prompts(request, params)
        streams = self.engine.submit(prompts, params)
        reply = _Reply(self, "cmpl", "text_completion", streams, params, request.return_tokens_as_token_ids)
        echo = [self.decode(p) for p in prompts] if request.echo else None
        if request.stream:
            return _sse(reply, reply.completion_chunks(echo, request.include_usage))
        outputs = await reply.collect(http)
        if outputs is None:
            return Response(status_code=499)
        choices = [{"index": i, "text": (echo[i] if echo else "") + out.text,
                    "logprobs": reply.logprobs.completion(out.token_ids, out.logprobs), "finish_reason":
                    _reason(out)} for i, out in enumerate(outputs)]
        return JSONResponse(reply.body(choices, usage=_usage(outputs)))

    async def chat(self, request: ChatCompletionRequest, http: Request) -> Response:
        params = request.sampling_params()
        prompt = self.chat_prompt(request, params)
        streams = self.engine.submit([prompt], params)
        reply = _Reply(self, "chatcmpl", "chat.completion", streams, params, request.return_tokens_as_token_ids)
        if request.stream:
            return _sse(reply, reply.chat_chunks(request.include_usage))
        outputs = await reply.collect(http)
        if outputs is None:
            return Response(status_code=499)
        out = outputs[0]
        choice = {"index": 0, "message": {"role": "assistant", "content": out.text},
                  "logprobs": reply.logprobs.chat(out.token_ids, out.logprobs),
                  "finish_reason": _reason(out)}
        return JSONResponse(reply.body([choice], usage=_usage(outputs)))

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids) if self.tokenizer is not None else ""


class _Logprobs:
    """Logprobs in OpenAI's two shapes. Tokens are named by their decoded text, or "token_id:N" when
    the request set vLLM's `return_tokens_as_token_ids` (exact, and what a tokenizer-less model gets)."""

    def __init__(self, serving: OpenAIServing, top_n: int, as_ids: bool) -> None:
        self.decode = serving.decode
        self.top_n = top_n
        self.as_ids = as_ids or serving.tokenizer is None

    def _token(self, token_id: int) -> str:
        return f"token_id:{token_id}" if self.as_ids else self.decode([token_id])

    def completion(self, ids: list[int], logprobs: list[dict[int, float]] | None,
                   offset: int = 0) -> dict[str, Any] | None:
        """The legacy shape: parallel lists of tokens, their logprobs, top-n maps and text offsets."""
        if logprobs is None:
            return None
        tokens = [self._token(t) for t in ids]
        offsets = []
        for token in tokens:
            offsets.append(offset)
            offset += len(token)
        return {"tokens": tokens, "token_logprobs": [lp[t] for t, lp in zip(ids, logprobs)],
                "top_logprobs": [{self._token(k): v for k, v in lp.items()} for lp in logprobs],
                "text_offset": offsets}

    def chat(self, ids: list[int], logprobs: list[dict[int, float]] | None) -> dict[str, Any] | None:
        """The chat shape: one entry per token with its bytes and the top-n tokens, best first (the
        engine's map also holds the chosen token, which may rank lower)."""
        if logprobs is None:
            return None
        content = []
        for token_id, lp in zip(ids, logprobs):
            top = sorted(lp.items(), key=lambda kv: -kv[1])[:self.top_n]
            content.append({**_token_entry(self._token(token_id), lp[token_id]),
                            "top_logprobs": [_token_entry(self._token(k), v) for k, v in top]})
        return {"content": content}


def _token_entry(text: str, logprob: float) -> dict[str, Any]:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _reason(out: RequestOutput) -> str | None:
    return out.finish_reason if out.finished else None


def _usage(outputs: list[RequestOutput]) -> dict[str, int]:
    prompt = sum(len(o.prompt_token_ids) for o in outputs)
    completion = sum(len(o.token_ids) for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(reply: _Reply, chunks: AsyncIterator[dict[str, Any]]) -> StreamingResponse:
    async def events() -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except EngineDead as exc:  # the stream has started: the error goes in-band, as OpenAI's does
            yield f"data: {json.dumps(error_body(str(exc), 'server_error'))}\n\n"
        finally:
            reply.abort()  # the client left (or the stream ended): nothing more is wanted
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class _Reply:
    """One HTTP request's engine requests (one per prompt), their ids and shapes, and their abort."""

    def __init__(self, serving: OpenAIServing, prefix: str, kind: str, streams: list[RequestStream],
                 params: SamplingParams, tokens_as_ids: bool) -> None:
        self.engine = serving.engine
        self.model_name = serving.model_name
        self.id = f"{prefix}-{uuid.uuid4().hex}"
        self.kind = kind
        self.created = int(time.time())
        self.streams = streams
        self.hold = max((len(s) for s in params.stop or ()), default=1) - 1
        self.logprobs = _Logprobs(serving, params.logprobs or 0, tokens_as_ids)

    def abort(self) -> None:
        for stream in self.streams:
            self.engine.abort(stream)

    def body(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None, *,
             kind: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "object": kind or self.kind, "created": self.created,
                                "model": self.model_name, "choices": choices}
        if usage is not None:
            body["usage"] = usage
        return body

    async def collect(self, http: Request) -> list[RequestOutput] | None:
        """Every prompt's final output, in order; None (and the requests aborted) if the client leaves."""
        final: dict[int, RequestOutput] = {}

        async def gather() -> None:
            async for index, out in self.engine.outputs(self.streams):
                if out.finished:
                    final[index] = out

        work = asyncio.ensure_future(gather())
        gone = asyncio.ensure_future(_disconnected(http))
        try:
            await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not work.done():
                work.cancel()
                self.abort()
        if not work.done() or work.cancelled():
            return None
        work.result()  # raises what the engine raised
        return [final[i] for i in range(len(self.streams))]

    async def completion_chunks(self, echo: list[str] | None, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        cursors = [_Cursor(self.hold) for _ in self.streams]
        finals: list[RequestOutput] = []
        usage_field = {"usage": None} if include_usage else {}
        if echo:
            for i, text in enumerate(echo):
                yield {**self.body([{"index": i, "text": text, "logprobs": None, "finish_reason": None}]),
                       **usage_field}
        async for index, out in self.engine.outputs(self.streams):
            text, first = cursors[index].advance(out)
            if not text and not out.finished and out.logprobs is None:
                continue
            logprobs = (self.logprobs.completion(out.token_ids[first:], out.logprobs[first:],
                                                 cursors[index].text - len(text))
                        if out.logprobs is not None else None)
            yield {**self.body([{"index": index, "text": text, "logprobs": logprobs,
                                 "finish_reason": _reason(out)}]), **usage_field}
            if out.finished:
                finals.append(out)
        if include_usage:
            yield self.body([], usage=_usage(finals))

    async def chat_chunks(self, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        kind = "chat.completion.chunk"
        cursor = _Cursor(self.hold)
        usage_field = {"usage": None} if include_usage else {}
        yield {**self.body([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}], kind=kind), **usage_field}
        final = None
        async for _, out in self.engine.outputs(self.streams):
            text, first = cursor.advance(out)
            if not text and not out.finished and out.logprobs is None:
                continue
            logprobs = (self.logprobs.chat(out.token_ids[first:], out.logprobs[first:])
                        if out.logprobs is not None else None)
            delta = {"content": text} if text else {}
            yield {**self.body([{"index": 0, "delta": delta, "logprobs": logprobs,
                                 "finish_reason": _reason(out)}], kind=kind), **usage_field}
            final = out
        if include_usage and final is not None:
            yield self.body([], usage=_usage([final]), kind=kind)


async def _disconnected(http: Request) -> None:
    """Returns when the client closes the connection (its request body has been read already)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return
