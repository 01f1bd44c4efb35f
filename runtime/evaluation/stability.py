"""The seed article's stability claims for a serving engine under concurrency, measured on any endpoint:

- latency spread: TPOT's standard deviation and p99 under the concurrent load (`summarize_load` has them);
- long context: requests at 50%, 90% and all of the model's `max_model_len` (the prompt leaves room for
  the answer), answered with no 5xx and no out-of-memory while a load of short requests runs;
- session switch: N multi-turn conversations interleaved turn by turn, each turn's prompt the whole
  history so far. The time to the first token of a follow-up turn — what a prefix cache makes cheap,
  since the history is cached from the turn before — beside the first turn's.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from runtime.evaluation.bench.load import (
    RequestResult,
    load_client,
    one_request,
    summarize_load,
)
from runtime.evaluation.bench.stats import distribution
from runtime.evaluation.endpoint import Endpoint, ask
from runtime.evaluation.load_prompts import PromptMaker

LONG_CONTEXT_FRACTIONS = (0.5, 0.9, 1.0)
_TURNS = ("Tell me about the history of the city of {}.", "What is the weather like there in winter?",
          "Name one famous building there.", "How would I travel there from the coast?",
          "Summarize what you told me in one sentence.")
_CITIES = ("Paris", "Kyoto", "Lima", "Cairo", "Oslo", "Perth", "Quito", "Dakar")
_OOM = re.compile(r"out of memory|outofmemory|\boom\b", re.IGNORECASE)  # torch's, CANN's and vLLM's wordings


def session_switch(endpoint: Endpoint, *, sessions: int, turns: int, max_tokens: int, chat: bool) -> dict[str, Any]:
    """`sessions` conversations of `turns` turns, one request at a time, turn 1 of every conversation,
    then turn 2 of every one, ...; TTFT of first turns and of follow-ups (ms)."""
    histories: list[list[dict[str, str]]] = [[] for _ in range(sessions)]
    first, follow, errors = [], [], []
    with endpoint.client() as client:
        for turn in range(turns):
            for s, history in enumerate(histories):
                question = _TURNS[turn % len(_TURNS)].format(_CITIES[s % len(_CITIES)])
                history.append({"role": "user", "content": question})
                prompt = history if chat else _transcript(history)
                answer = ask(client, endpoint, "chat" if chat else "plain", prompt, max_tokens, stream=True)
                if not answer.ok or answer.ttft is None:
                    errors.append(f"session {s + 1} turn {turn + 1}: {answer.error or 'no text'}")
                    history.append({"role": "assistant", "content": answer.text})
                    continue
                (first if turn == 0 else follow).append(answer.ttft * 1000)
                history.append({"role": "assistant", "content": answer.text})
    return {"sessions": sessions, "turns": turns, "max_tokens": max_tokens, "chat": chat,
            "first_turn_ttft_ms": distribution(first), "follow_up_ttft_ms": distribution(follow),
            "failed": len(errors), "errors": errors[:5]}


def _transcript(history: list[dict[str, str]]) -> str:
    """A conversation as plain text, for a model without a chat template (the prefix still grows)."""
    lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in history]
    return "\n".join(lines) + "\nAssistant:"


def long_context(endpoint: Endpoint, prompts: PromptMaker, *, max_model_len: int, new_tokens: int,
                 background: int, background_prompt_len: int) -> dict[str, Any]:
    """One request at each of LONG_CONTEXT_FRACTIONS of `max_model_len`, in turn, while `background`
    short requests stream continuously beside them."""
    return asyncio.run(_long_context(endpoint, prompts, max_model_len, new_tokens, background,
                                     background_prompt_len))


async def _long_context(endpoint: Endpoint, prompts: PromptMaker, max_model_len: int, new_tokens: int,
                        background: int, background_prompt_len: int) -> dict[str, Any]:
    stop = asyncio.Event()
    beside: list[RequestResult] = []
    async with load_client(endpoint, background + 1) as client:
        async def keep_busy() -> None:
            while not stop.is_set():
                beside.append(await one_request(client, endpoint, prompts.random(background_prompt_len), new_tokens))

        workers = [asyncio.create_task(keep_busy()) for _ in range(background)]
        started = time.perf_counter()
        rows = []
        for fraction in LONG_CONTEXT_FRACTIONS:
            length = max(1, min(int(max_model_len * fraction), max_model_len - new_tokens) - 1)
            result = await one_request(client, endpoint, prompts.sized(length), new_tokens)
            error = result.error or ""
            rows.append({"fraction": fraction, "prompt_tokens": result.prompt_tokens or length, "ok": result.ok,
                         "error": result.error, "server_error": error.startswith("HTTP 5"),
                         "out_of_memory": _OOM.search(error) is not None,
                         "ttft_ms": result.ttft * 1000 if result.ttft is not None else None,
                         "e2e_ms": result.e2e * 1000 if result.e2e is not None else None})
        stop.set()
        await asyncio.gather(*workers)
        wall = time.perf_counter() - started
    load = summarize_load(beside, wall)
    server_errors = sum(1 for r in beside if (r.error or "").startswith("HTTP 5"))
    out_of_memory = sum(1 for r in beside if _OOM.search(r.error or ""))
    return {"max_model_len": max_model_len, "new_tokens": new_tokens, "requests": rows,
            "background": {"concurrency": background, "prompt_len": background_prompt_len,
                           "requests": load["requests"], "failed": load["failed"], "server_errors": server_errors,
                           "out_of_memory": out_of_memory, "errors": load["errors"]},
            "ok": all(r["ok"] for r in rows) and load["failed"] == 0}
