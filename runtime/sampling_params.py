"""What a request asks of the sampler and the stop checks, with vLLM's names and defaults.

The names and defaults are vLLM's so that code written against ``vllm.SamplingParams`` (the seed
article's readers, the OpenAI server's request mapping) works unchanged.  Everything is validated
here, once, when the request arrives: the sampler runs every step on a whole batch and must not find
out then that one row asked for a negative temperature.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Temperatures below this are greedy (vLLM's ``_SAMPLING_EPS``): dividing logits by a temperature
#: this small overflows the softmax into one-hot anyway, and argmax gets there without the NaN risk.
SAMPLING_EPS = 1e-5

#: The range ``torch.Generator.manual_seed`` accepts; checked here so a bad seed is a 400, not a crash
#: in the middle of a batch.
_SEED_MIN, _SEED_MAX = -(2**63), 2**64 - 1


def _is_int(value: object) -> bool:
    # bool is an int subclass; `top_k=True` is a mistake, not a request for top-1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    """How to pick each next token and when to stop.

    ``temperature`` 0 (anything below :data:`SAMPLING_EPS`) is greedy; ``top_k`` -1 or 0 means off
    (both spellings are in use: vLLM's old default is -1, its new one and HF's "off" is 0) and is
    normalised to -1; ``top_p`` 1.0 is off.  ``max_tokens`` None means "until the context is full".
    ``stop`` is normalised to a list, ``stop_token_ids`` to a list.  ``logprobs`` n returns, for each
    generated token, the logprobs of the n most likely tokens plus the chosen one (0: only the chosen
    one).  ``prompt_logprobs`` n returns, for every prompt token after the first, its logprob given the
    tokens before it plus the n most likely tokens there (what perplexity needs; such a request does not
    use the prefix cache, whose blocks carry K/V but no logits).  ``min_tokens`` keeps EOS and ``stop_token_ids`` from ending the output before that many
    tokens (stop strings still apply, as in vLLM).
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_tokens: int | None = 16
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    seed: int | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    min_tokens: int = 0
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self._check_sampling()
        self._check_lengths()
        self._check_stops()
        if self.seed is not None and not (_is_int(self.seed) and _SEED_MIN <= self.seed <= _SEED_MAX):
            raise ValueError(f"seed must be an integer in [-2**63, 2**64 - 1] or None, got {self.seed!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and not (_is_int(value) and value >= 0):
                raise ValueError(f"{name} must be an integer >= 0 or None, got {value!r}")
        for name in ("ignore_eos", "skip_special_tokens"):
            if type(getattr(self, name)) is not bool:  # 0/1/"yes" are mistakes, not flags
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def _check_sampling(self) -> None:
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise ValueError(f"top_k must be -1 or 0 (off) or >= 1, got {self.top_k!r}")
        if self.top_k == 0:
            self.top_k = -1
        self.temperature = float(self.temperature)
        self.top_p = float(self.top_p)

    def _check_lengths(self) -> None:
        if self.max_tokens is not None and not (_is_int(self.max_tokens) and self.max_tokens >= 1):
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens!r}")
        if not _is_int(self.min_tokens) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be >= 0, got {self.min_tokens!r}")
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")

    def _check_stops(self) -> None:
        stop = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)
        if not all(isinstance(s, str) for s in stop):
            raise ValueError(f"stop must be a string or a list of strings, got {self.stop!r}")
        if any(s == "" for s in stop):
            # "" occurs everywhere: it would end every request before its first token.
            raise ValueError("stop must not contain an empty string")
        self.stop = stop
        ids = [] if self.stop_token_ids is None else list(self.stop_token_ids)
        if not all(_is_int(i) and i >= 0 for i in ids):
            raise ValueError(f"stop_token_ids must be a list of integers >= 0, got {self.stop_token_ids!r}")
        self.stop_token_ids = ids

    @property
    def greedy(self) -> bool:
        """True when the sampler takes the argmax (top_k/top_p/seed are then irrelevant)."""
        return self.temperature < SAMPLING_EPS
