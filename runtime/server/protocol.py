"""The request bodies of OpenAI's completions and chat completions APIs, as pydantic models.

Field names and defaults are OpenAI's, plus vLLM's extensions (`top_k`, `ignore_eos`, `min_tokens`,
`stop_token_ids`, `skip_special_tokens`, `add_generation_prompt`, `return_tokens_as_token_ids`), so
a client written for either
works unchanged.  Unknown fields are refused, as OpenAI refuses them ("Unrecognized request
argument"): a misspelt `max_token` silently ignored would be worse.  Fields OpenAI defines that this
runtime cannot honour (`n` > 1, penalties, `logit_bias`, tools) are accepted at their neutral value
and refused otherwise, with the field named — never silently dropped.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from runtime.sampling_params import SamplingParams

#: The most logprobs a request may ask for (OpenAI's top_logprobs limit, vLLM's default max_logprobs).
MAX_LOGPROBS = 20


class RequestError(ValueError):
    """A request the server refuses with 400; `param` names the field (OpenAI's error object)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False


class _GenerationRequest(BaseModel):
    """What completions and chat share: the sampling fields and streaming."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    return_tokens_as_token_ids: bool = False  # vLLM's: logprobs name tokens "token_id:N", exactly

    def _check_supported(self) -> None:
        if self.n != 1:
            raise RequestError(f"n={self.n}: this server returns one choice per prompt (n=1)", "n")
        for name, neutral in (("presence_penalty", 0.0), ("frequency_penalty", 0.0), ("repetition_penalty", 1.0)):
            value = getattr(self, name)
            if value is not None and value != neutral:
                raise RequestError(f"{name}={value}: penalties are not supported by this runtime", name)
        if self.logit_bias:
            raise RequestError("logit_bias is not supported by this runtime", "logit_bias")
        if self.stream_options is not None and not self.stream:
            raise RequestError("stream_options is only allowed when stream is true", "stream_options")

    def _sampling(self, max_tokens: int | None, logprobs: int | None) -> SamplingParams:
        """SamplingParams with OpenAI's defaults (temperature 1, top_p 1); its own checks name the field."""
        self._check_supported()
        if logprobs is not None and logprobs > MAX_LOGPROBS:
            raise RequestError(f"logprobs must be <= {MAX_LOGPROBS}, got {logprobs}", "logprobs")
        values: dict[str, Any] = {
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p, "top_k": -1 if self.top_k is None else self.top_k,
            "max_tokens": max_tokens, "stop": self.stop, "stop_token_ids": self.stop_token_ids, "seed": self.seed,
            "ignore_eos": self.ignore_eos, "logprobs": logprobs, "min_tokens": self.min_tokens,
            "skip_special_tokens": self.skip_special_tokens}
        try:
            return SamplingParams(**values)
        except ValueError as exc:  # "top_p must be in (0, 1], got 2.0": the first word is the field
            message = str(exc)
            raise RequestError(message, message.split(" ", 1)[0]) from None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = 16
    logprobs: int | None = Field(default=None, ge=0)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def sampling_params(self) -> SamplingParams:
        if self.suffix:
            raise RequestError("suffix is not supported by this runtime", "suffix")
        if self.best_of not in (None, 1):
            raise RequestError(f"best_of={self.best_of}: only best_of=1 is supported", "best_of")
        if self.echo and self.logprobs is not None:
            raise RequestError("echo with logprobs needs prompt logprobs, which this runtime does not compute",
                               "echo")
        return self._sampling(self.max_tokens, self.logprobs)

    def prompts(self) -> list[str | list[int]]:
        """The prompts as a list: one text or token-id list each."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if not prompt:
            raise RequestError("prompt must not be empty", "prompt")
        if isinstance(prompt[0], int):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None

    def as_template_input(self) -> dict[str, str]:
        """What a chat template reads: role and plain-text content (text parts joined)."""
        content = self.content
        if isinstance(content, list):
            content = "".join(part.text for part in content)
        message = {"role": self.role, "content": content or ""}
        if self.name:
            message["name"] = self.name
        return message


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0)
    response_format: ResponseFormat | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    add_generation_prompt: bool = True

    def sampling_params(self) -> SamplingParams:
        if self.tools:
            raise RequestError("tools are not supported by this runtime", "tools")
        if self.tool_choice not in (None, "none"):
            raise RequestError("tool_choice is not supported by this runtime", "tool_choice")
        if self.top_logprobs is not None and not self.logprobs:
            raise RequestError("top_logprobs needs logprobs to be true", "top_logprobs")
        max_tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return self._sampling(max_tokens, (self.top_logprobs or 0) if self.logprobs else None)

    def conversation(self) -> list[dict[str, str]]:
        return [m.as_template_input() for m in self.messages]
