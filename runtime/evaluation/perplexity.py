"""Perplexity of a text under a model served by this runtime, from its prompt logprobs.

Quantization is judged by perplexity as well as by greedy agreement: greedy tokens diverge at the
first near-tie (on a 135M model even bf16 against fp32 does), while perplexity averages the
log-likelihood of every token of a fixed text and so moves only as much as the model really does.
The text is cut into windows that do not overlap; each is one request with ``prompt_logprobs=0``
(the first token of a window has nothing before it and is not scored), which is how
lm-evaluation-harness scores a text through vLLM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from runtime.llm import LLM
from runtime.sampling_params import SamplingParams

#: The text the quantization benchmark scores (shipped with the package, so every run scores the same).
DEFAULT_TEXT = Path(__file__).with_name("data") / "perplexity.txt"


@dataclass(frozen=True)
class Perplexity:
    """exp(nll / tokens) over `tokens` scored tokens in `windows` windows."""

    nll: float
    tokens: int
    windows: int

    @property
    def value(self) -> float:
        return math.exp(self.nll / self.tokens)


def windows(token_ids: list[int], window: int) -> list[list[int]]:
    """`token_ids` cut into consecutive windows of `window` tokens; a last window of one token (which
    scores nothing) is dropped."""
    if window < 2:
        raise ValueError(f"window must be >= 2 tokens, got {window}")
    parts = [token_ids[i:i + window] for i in range(0, len(token_ids), window)]
    return [p for p in parts if len(p) > 1]


def perplexity(llm: LLM, text: str, window: int = 512) -> Perplexity:
    """The perplexity of `text` under `llm`'s model, `window` tokens per request (all requests go
    in one batch, so the engine's continuous batching runs them together)."""
    tokenizer = llm.get_tokenizer()
    if tokenizer is None:
        raise ValueError("this model has no tokenizer: perplexity needs one to encode the text")
    limit = llm.engine.max_model_len - 1  # each request still generates one token
    if window > limit:
        raise ValueError(f"window of {window} tokens does not fit max_model_len {llm.engine.max_model_len}")
    parts = windows(tokenizer.encode(text, add_special_tokens=False), window)
    if not parts:
        raise ValueError("the text has fewer than 2 tokens: nothing to score")
    params = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=0, ignore_eos=True)
    outputs = llm.generate(parts, params, progress=False)
    nll, tokens = 0.0, 0
    for part, out in zip(parts, outputs):
        scored = out.prompt_logprobs or []
        for token, entry in zip(part[1:], scored[1:]):
            nll -= entry[token]
            tokens += 1
    return Perplexity(nll, tokens, len(parts))
