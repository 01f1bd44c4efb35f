"""Turn generated token ids into text one token at a time, for streaming and stop strings.

Decoding each token on its own is wrong in two ways.  Byte-level BPE (GPT-2, Qwen, SmolLM2) and
sentencepiece byte fallback (Llama) split one UTF-8 character over several tokens, so a lone token
decodes to U+FFFD; and sentencepiece decoders drop the leading space of whatever they decode, so
"▁world" alone is "world".  Decoding everything every step is right but quadratic.

The technique (vLLM's, from text-generation-inference) decodes a short window twice: the tokens
already emitted at its start (``prefix``), then the same tokens plus the new ones.  The text that the
new tokens add is the difference, and the window gives the decoder the context it needs for spaces.
When that text ends in U+FFFD the character is not finished yet: nothing is emitted and the window
grows until it is.  The window starts in the prompt's last tokens, so the first generated token
is decoded as a continuation of the prompt (a sentencepiece "▁The" yields " The", as vLLM returns).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

REPLACEMENT = "\ufffd"

#: Prompt tokens kept as decoding context for the first generated tokens (vLLM uses 5).
PROMPT_CONTEXT = 5

#: A UTF-8 character is at most 4 bytes, so a valid one is finished within 4 byte tokens.  A longer
#: run that still ends in U+FFFD is invalid bytes from the model: emit it rather than let the window
#: (and the cost of each step) grow without bound.
MAX_PENDING = 16

#: Emitted tokens older than this are dropped from the window buffer, which keeps memory per request
#: constant; the window itself never reaches back further than the last emitted chunk.
_TRIM_AT = 64


class IncrementalDetokenizer:
    """Generated text of one request, built token by token.

    ``append(id)`` returns the text that id completes (often "", never a trailing U+FFFD of an
    unfinished character).  ``text`` is everything so far: the appended pieces plus any tail still
    waiting for the rest of a character, so at the end it equals the full decode of the generated ids
    (for byte-level BPE exactly ``tokenizer.decode(ids)``; for sentencepiece, the decode of prompt +
    output minus that of the prompt, i.e. with the leading space a lone decode would strip).
    ``check_stop`` cuts ``text`` before the first stop string found.
    """

    def __init__(self, tokenizer: Any, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        # Window buffer: a few prompt ids, then the generated ids not yet trimmed away.
        self._ids: list[int] = list(prompt_token_ids[-PROMPT_CONTEXT:]) if PROMPT_CONTEXT else []
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        self._emitted = ""
        self._stop: str | None = None
        self._stop_checked_upto = 0

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def append(self, token_id: int) -> str:
        """Add one generated token; return the new text it makes final ("" while a character is
        unfinished or the token decodes to nothing, e.g. a skipped special token)."""
        if self._stop is not None:
            raise RuntimeError(f"append() after the stop string {self._stop!r} ended this sequence")
        self.token_ids.append(token_id)
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        new_text = self._decode(self._ids[self._prefix_offset:])
        pending = len(self._ids) - self._read_offset
        if pending <= MAX_PENDING and (len(new_text) <= len(prefix_text) or new_text.endswith(REPLACEMENT)):
            return ""
        delta = new_text[len(prefix_text):]
        self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)
        self._emitted += delta
        self._trim()
        return delta

    def _trim(self) -> None:
        if self._prefix_offset >= _TRIM_AT:
            del self._ids[:self._prefix_offset]
            self._read_offset -= self._prefix_offset
            self._prefix_offset = 0

    @property
    def text(self) -> str:
        """All generated text: what ``append`` returned, plus a tail still waiting for the rest of a
        character (decoded as it stands, with U+FFFD), unless a stop string ended the text."""
        if self._stop is not None or self._read_offset == len(self._ids):
            return self._emitted
        prefix_text = self._decode(self._ids[self._prefix_offset:self._read_offset])
        tail = self._decode(self._ids[self._prefix_offset:])[len(prefix_text):]
        return self._emitted + tail

    @property
    def emitted(self) -> str:
        """The text ``append`` has returned so far (cut at a stop string): final, it only grows."""
        return self._emitted

    @property
    def stop_string(self) -> str | None:
        """The stop string that ended the text, if any."""
        return self._stop

    def check_stop(self, stop: Sequence[str]) -> str | None:
        """If a stop string now occurs in the emitted text, cut the text right before it and return it.

        Only text not searched before (plus an overlap of len(stop string) - 1 characters, for a stop
        string that straddles two appends) is scanned, so calling this every step stays linear; call
        it with the same list each time.  The earliest match wins; at equal positions, the first in
        ``stop``.  Once stopped, the same string is returned again and the text stays cut.
        """
        if self._stop is not None:
            return self._stop
        if not stop:
            return None
        text = self._emitted
        best: tuple[int, str] | None = None
        for s in stop:
            at = text.find(s, max(0, self._stop_checked_upto - len(s) + 1))
            if at != -1 and (best is None or at < best[0]):
                best = (at, s)
        self._stop_checked_upto = len(text)
        if best is None:
            return None
        self._emitted = text[:best[0]]
        self._stop = best[1]
        return best[1]
