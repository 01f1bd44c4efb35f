"""An OpenAI-compatible server as smoke, bench and the gate meet it: ours, vLLM / vllm-ascend, MindIE's
OpenAI endpoint, `transformers serve`.

Only the OpenAI surface is assumed (`/v1/models`, `/v1/completions`, `/v1/chat/completions`, streaming,
`usage`). What a server offers beyond it is probed once, with one-token requests, and used where it is
there: vLLM's token-id answers (`return_tokens_as_token_ids`), token-id prompts, `ignore_eos`, `/tokenize`,
a Prometheus `/metrics` (`vllm:` or `ascendkit:` samples). A server that refuses an extra field (as
`transformers serve` does, with 422) simply lacks it; the report says which extras were absent.

Getting to the model is the one thing that can stop the tools: an unreachable URL, a refused key, a
model the server does not serve raise `EndpointError` with that reason in one line. Everything after
(a 5xx in a load, a stream cut short) is a result, counted and reported.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ascend_common.errors import UserError

#: where the key comes from when --api-key is not given (the same variable `ascendkit serve` reads)
API_KEY_ENV = "ASCENDKIT_API_KEY"
#: the extras a report lists as present or absent, in its order
EXTRAS = ("token_ids", "token_prompts", "ignore_eos", "tokenize", "metrics")


class EndpointError(UserError):
    """The model cannot be reached: unreachable server, refused key, unknown model, not OpenAI's API."""


@dataclass
class Answer:
    """One completion as the client saw it. `token_ids` only where the server returns them;
    `done` whether a stream ended with `data: [DONE]`; `error` a refusal or a broken stream."""

    text: str = ""
    token_ids: list[int] | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    done: bool | None = None  # None: not streamed
    error: str | None = None
    ttft: float | None = None  # seconds from sending to the first text (streamed)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Endpoint:
    """A server and the one model on it the tools talk to, with what it offers beyond OpenAI's API."""

    url: str
    model: str
    api_key: str | None = None
    card: dict[str, Any] = field(default_factory=dict)  # the model's /v1/models entry
    extras: dict[str, bool] = field(default_factory=dict)  # EXTRAS → present
    metrics_kind: str | None = None  # "vllm" | "ascendkit" | "prometheus" | None (no /metrics)
    chat: bool = True  # /v1/chat/completions answers (a base model served without a template refuses it)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def has(self, extra: str) -> bool:
        return self.extras.get(extra, False)

    @property
    def ours(self) -> dict[str, Any] | None:
        """`ascendkit serve`'s own card entry (vocab_size, dtype, device, KV figures), or None."""
        return self.card.get("ascendkit")

    @property
    def max_model_len(self) -> int | None:
        """vLLM and ours report it in the model card; None where the server does not."""
        value = self.card.get("max_model_len")
        return value if isinstance(value, int) and value > 0 else None

    def count_tokens(self, client, kind: str, prompt: str, add_special_tokens: bool = True) -> int | None:
        """The server's own count of a prompt from vLLM's /tokenize (a chat prompt through its template),
        or None where it has none: what counts tokens when no tokenizer is at hand here."""
        if not self.has("tokenize"):
            return None
        body: dict[str, Any] = {"model": self.model}
        if kind == "chat":
            body.update(messages=[{"role": "user", "content": prompt}], add_generation_prompt=True)
        else:
            body.update(prompt=prompt, add_special_tokens=add_special_tokens)
        import httpx

        try:
            response = client.post("/tokenize", json=body)
        except httpx.HTTPError:
            return None
        count = _json(response).get("count") if response.status_code == 200 else None
        return count if isinstance(count, int) else None

    def client(self, timeout: float = 600):
        import httpx

        return httpx.Client(base_url=self.url, headers=self.headers, timeout=timeout)

    def summary(self) -> dict[str, Any]:
        """What reports record about the endpoint."""
        return {"url": self.url, "model": self.model, "max_model_len": self.max_model_len, "chat": self.chat,
                "extras": {name: self.has(name) for name in EXTRAS}, "metrics": self.metrics_kind,
                "server": "ascendkit" if self.ours else self.card.get("owned_by")}


def _error_message(response) -> str:
    """The server's own words: OpenAI's error object, FastAPI's `detail`, or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])[:200]
        if body.get("detail"):
            return str(body["detail"])[:200]
        if isinstance(error, str):
            return error[:200]
    return response.text.strip()[:200]


def open_endpoint(url: str, model: str | None = None, api_key: str | None = None, *,
                  label: str = "--endpoint", key_hint: str = f"give --api-key or set {API_KEY_ENV}",
                  timeout: float = 30) -> Endpoint:
    """The endpoint at `url` serving `model` (default: the only model its /v1/models lists), probed.
    `url` may end in /v1, as OpenAI clients' base URLs do. `key_hint`: where a refused key comes from."""
    import httpx

    url = url.rstrip("/").removesuffix("/v1")
    if not url.startswith(("http://", "https://")):
        raise EndpointError(f"{label} {url}: not an http:// or https:// URL")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.get(f"{url}/v1/models", headers=headers, timeout=timeout)
    except httpx.HTTPError as exc:
        raise EndpointError(f"{label} {url}: unreachable ({type(exc).__name__}: {exc})") from None
    if response.status_code in (401, 403):
        raise EndpointError(f"{label} {url}: HTTP {response.status_code}, the API key was refused "
                            f"({_error_message(response)}); {key_hint}")
    if response.status_code != 200:
        raise EndpointError(f"{label} {url}: /v1/models answered HTTP {response.status_code}: "
                            f"{_error_message(response)}")
    data = _json(response).get("data")
    cards = [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)] if isinstance(data, list) else []
    if not cards and not isinstance(data, list):
        raise EndpointError(f"{label} {url}: /v1/models is not OpenAI's model list (no data[].id)")
    names = [c["id"] for c in cards]
    if model is None:
        if len(cards) != 1:
            raise EndpointError(f"{label} {url}: serves {len(cards)} models ({', '.join(names) or 'none'}); "
                                f"name one with --model")
        card = cards[0]
    else:
        card = next((c for c in cards if c["id"] == model), None)
        if card is None:
            raise EndpointError(f"{label} {url}: unknown model {model!r} (it serves: {', '.join(names) or 'none'})")
    endpoint = Endpoint(url, card["id"], api_key, card)
    try:
        _probe(endpoint, label)
    except httpx.HTTPError as exc:
        raise EndpointError(f"{label} {url}: the probe requests failed ({type(exc).__name__}: {exc})") from None
    return endpoint


def _probe(endpoint: Endpoint, label: str) -> None:
    """Which extras the server has, each asked with a one-token request; a refused extra is absent.
    The first plain request must succeed with a completion: a server that cannot answer one token is
    not usable. Chat is probed too: a base model served without a chat template refuses it."""
    import httpx

    with endpoint.client(timeout=600) as client:  # a cold engine's first request compiles graphs: minutes
        plain = {"model": endpoint.model, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
        first = client.post("/v1/completions", json=plain)
        if first.status_code != 200:
            raise EndpointError(f"{label} {endpoint.url}: a one-token completion of model {endpoint.model!r} "
                                f"answered HTTP {first.status_code}: {_error_message(first)}")
        if _plain_answer(first, "plain").error:
            raise EndpointError(f"{label} {endpoint.url}: a one-token completion is not OpenAI's completion "
                                f"object: {first.text.strip()[:120]!r}")
        chat = client.post("/v1/chat/completions", json={"model": endpoint.model, "max_tokens": 1, "temperature": 0,
                                                         "messages": [{"role": "user", "content": "Hello"}]})
        endpoint.chat = chat.status_code == 200 and not _plain_answer(chat, "chat").error
        ids = _plain_answer(client.post("/v1/completions", json={**plain, "logprobs": 0,
                                                                 "return_tokens_as_token_ids": True}), "plain")
        endpoint.extras["token_ids"] = ids.token_ids is not None
        endpoint.extras["token_prompts"] = client.post("/v1/completions",
                                                       json={**plain, "prompt": [1, 2, 3]}).status_code == 200
        endpoint.extras["ignore_eos"] = client.post("/v1/completions",
                                                    json={**plain, "ignore_eos": True}).status_code == 200
        tokenize = client.post("/tokenize", json={"model": endpoint.model, "prompt": "Hello"})
        endpoint.extras["tokenize"] = tokenize.status_code == 200 and isinstance(_json(tokenize).get("count"), int)
        try:
            metrics = client.get("/metrics")
        except httpx.HTTPError:
            metrics = None
        if metrics is not None and metrics.status_code == 200:
            text = metrics.text
            endpoint.metrics_kind = ("ascendkit" if "ascendkit:" in text else "vllm" if "vllm:" in text
                                     else "prometheus")
        endpoint.extras["metrics"] = endpoint.metrics_kind is not None


def _json(response) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _token_ids(choice: dict) -> list[int] | None:
    """The answer's token ids from vLLM's `token_id:N` logprob tokens (completions or chat), if there."""
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    tokens = (logprobs.get("tokens") if "tokens" in logprobs else
              [c.get("token") if isinstance(c, dict) else None for c in content] if isinstance(content, list) else None)
    if not tokens or not all(isinstance(t, str) and t.startswith("token_id:") for t in tokens):
        return None
    return [int(t.split(":", 1)[1]) for t in tokens]


def request_body(endpoint: Endpoint, kind: str, prompt: str | list[int] | list[dict], max_tokens: int, *,
                 stop: list[str] | None = None, stream: bool = False, token_ids: bool = False,
                 ignore_eos: bool = False) -> tuple[str, dict[str, Any]]:
    """The route and body of a greedy request; vLLM's extras only when asked for and present."""
    body: dict[str, Any] = {"model": endpoint.model, "max_tokens": max_tokens, "temperature": 0}
    if kind == "chat":
        route = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    else:
        route, body["prompt"] = "/v1/completions", prompt
    if stop:
        body["stop"] = stop
    if stream:
        body["stream"], body["stream_options"] = True, {"include_usage": True}
    if token_ids and endpoint.has("token_ids") and not stream:
        body["logprobs"] = True if kind == "chat" else 0
        body["return_tokens_as_token_ids"] = True
    if ignore_eos and endpoint.has("ignore_eos"):
        body["ignore_eos"] = True
    return route, body


def ask(client, endpoint: Endpoint, kind: str, prompt: str | list[int] | list[dict], max_tokens: int, *,
        stop: list[str] | None = None, stream: bool = False, token_ids: bool = True) -> Answer:
    """One greedy completion, plain or streamed; a refusal or broken stream is the answer's `error`."""
    import httpx

    route, body = request_body(endpoint, kind, prompt, max_tokens, stop=stop, stream=stream, token_ids=token_ids)
    start = time.perf_counter()
    try:
        if stream:
            with client.stream("POST", route, json=body) as response:
                answer = (read_stream(response.iter_lines(), kind, start) if response.status_code == 200
                          else Answer(error=f"HTTP {response.status_code}: {_error_message(_read(response))}"))
        else:
            response = client.post(route, json=body)
            answer = _plain_answer(response, kind)
    except httpx.HTTPError as exc:
        return Answer(error=f"{type(exc).__name__}: {exc}")
    return answer


def _read(response):
    response.read()
    return response


def _plain_answer(response, kind: str) -> Answer:
    if response.status_code != 200:
        return Answer(error=f"HTTP {response.status_code}: {_error_message(response)}")
    body = _json(response)
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"] if kind == "chat" else choice["text"]
    except (KeyError, IndexError, TypeError):
        return Answer(error="the answer has no choices[0] text")
    if text is not None and not isinstance(text, str):
        return Answer(error="the answer's text is not a string")
    return Answer(text=text or "", token_ids=_token_ids(choice), finish_reason=choice.get("finish_reason"),
                  usage=_usage(body.get("usage")))


def _usage(usage: Any) -> dict[str, int] | None:
    """OpenAI's usage object, its counts as ints (a missing or null count is left out); None without one."""
    if not isinstance(usage, dict):
        return None
    return {k: v for k, v in usage.items() if isinstance(v, int) and not isinstance(v, bool)}


class StreamReader:
    """Server-sent events of one streamed completion, fed line by line (the sync and the async client
    both read with it). A stream that ends without a `finish_reason` and without `data: [DONE]` was cut
    short: an error. One that gives its `finish_reason` and then closes without `[DONE]` (as `transformers
    serve` does) is complete, with `done` False."""

    def __init__(self, kind: str, start: float) -> None:
        self.kind, self.start = kind, start
        self.answer = Answer(done=False)
        self.piece = ""  # the text the last line fed brought

    def feed(self, line: str) -> bool:
        """Take one line; False once the stream is over (`[DONE]`, or an error in it)."""
        self.piece = ""
        if not line.startswith("data:"):
            return True
        data = line[5:].strip()
        answer = self.answer
        if data == "[DONE]":
            answer.done = True
            return False
        try:
            chunk = json.loads(data)
        except ValueError:
            chunk = None
        if not isinstance(chunk, dict):
            answer.error = f"a stream chunk is not a JSON object: {data[:80]!r}"
            return False
        if "error" in chunk:
            error = chunk["error"]
            answer.error = "error in stream: " + (error.get("message", "") if isinstance(error, dict) else str(error))
            return False
        if chunk.get("usage"):
            answer.usage = _usage(chunk["usage"])
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else []:
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            piece = (delta.get("content") if isinstance(delta, dict) else None) if self.kind == "chat" \
                else choice.get("text")
            if isinstance(piece, str) and piece:
                if answer.ttft is None:
                    answer.ttft = time.perf_counter() - self.start
                answer.text += piece
                self.piece += piece
            if choice.get("finish_reason"):
                answer.finish_reason = choice["finish_reason"]
        return True

    def finish(self) -> Answer:
        answer = self.answer
        if answer.error is None and not answer.done and answer.finish_reason is None:
            answer.error = "the stream stopped without a finish_reason or data: [DONE]"
        return answer


def read_stream(lines, kind: str, start: float) -> Answer:
    """A whole stream's lines into one answer (see StreamReader)."""
    reader = StreamReader(kind, start)
    for line in lines:
        if not reader.feed(line):
            break
    return reader.finish()
