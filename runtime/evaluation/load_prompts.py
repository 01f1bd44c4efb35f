"""Prompts of a given length in tokens for any endpoint: vLLM's "random" dataset where the server takes
token-id prompts, else text that the tokenizer measures.

A token-id prompt is exact. A text prompt is sized by encoding it (the server adds its BOS, so it is
one short of `n`); without a tokenizer, a text of `n` common words (about a token each for the
BPE vocabularies served here) — the report's `usage` then says what was sent.
"""

from __future__ import annotations

import random
from typing import Any

from runtime.evaluation.endpoint import Endpoint

_FILLER = ("The river runs past the old mill, and the miller counts the sacks of grain before the "
           "winter comes. ")


class PromptMaker:
    """Seeded prompts for the load and the long-context requests of one endpoint."""

    def __init__(self, endpoint: Endpoint, tokenizer: Any | None, seed: int = 0) -> None:
        self.tokenizer = tokenizer
        vocab = (endpoint.ours or {}).get("vocab_size") or (len(tokenizer) if tokenizer is not None else None)
        self.vocab = vocab if endpoint.has("token_prompts") else None
        self.rng = random.Random(seed)

    @property
    def exact(self) -> bool:
        """Prompts are token ids, of exactly the length asked, or text measured by the tokenizer."""
        return self.vocab is not None or self.tokenizer is not None

    def random(self, n: int) -> list[int] | str:
        """`n` random tokens (ids, or their text where the server takes only text)."""
        ids = [self.rng.randrange(1, self.vocab or (len(self.tokenizer) if self.tokenizer is not None else 1000))
               for _ in range(n)]
        if self.vocab is not None:
            return ids
        if self.tokenizer is None:
            words = _FILLER.split()
            return " ".join(words[i % len(words)] for i in ids)
        return self._fit(self.tokenizer.decode(ids, skip_special_tokens=True), n)

    def sized(self, n: int) -> list[int] | str:
        """A prompt of `n` tokens of plain prose (the long-context requests)."""
        if self.vocab is not None and self.tokenizer is not None:
            filler = self.tokenizer.encode(_FILLER, add_special_tokens=False)
            return (filler * (n // len(filler) + 1))[:n]
        if self.tokenizer is None:
            words = _FILLER.split()
            return " ".join(words[i % len(words)] for i in range(n))
        return self._fit(_FILLER * (n // 8 + 2), n)

    def _fit(self, text: str, n: int) -> str:
        """`text` cut to `n - 1` tokens as the tokenizer counts them (the server adds its BOS)."""
        for _ in range(4):
            ids = self.tokenizer.encode(text, add_special_tokens=False)
            if len(ids) <= n - 1:
                return text
            text = self.tokenizer.decode(ids[:max(n - 1, 1)], skip_special_tokens=True)
        return text
