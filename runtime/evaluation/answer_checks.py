"""What a client may rely on in a deployment's answers, checked on the smoke prompts: the same greedy
answer when asked twice, a streamed answer equal to the plain one, `max_tokens` / `finish_reason` and
stop strings honoured, `usage` consistent with the tokenizer.

Each check gives a row (`check`, `prompt`, `ok`, `detail`); `summarize_checks` folds them per check for
the report and the gate's rules. A stream that gives its finish_reason and closes without `data: [DONE]`
(`transformers serve`) passes the stream check, with that said in its detail: every OpenAI client reads
it to the end, and the load counts such streams (`streams_without_done`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from runtime.evaluation.endpoint import Answer, Endpoint, ask

CHECKS = ("repeat", "stream", "limits", "stop", "usage")
_SECOND_WORD = re.compile(r"\s*\S+(\s+\S+)\s+\S")


def _row(check: str, prompt: str, ok: bool, detail: str) -> dict[str, Any]:
    return {"check": check, "prompt": prompt, "ok": ok, "detail": detail}


def limits_row(prompt: str, answer: Answer, max_tokens: int) -> dict[str, Any]:
    """At most `max_tokens`; "length" only at `max_tokens`, and an earlier end a "stop"."""
    used = (answer.usage or {}).get("completion_tokens")
    reason = answer.finish_reason
    if used is None:
        return _row("limits", prompt, reason in ("stop", "length"), f"finish_reason {reason!r}; no usage to count")
    # "stop" at max_tokens too: an end token as the last one allowed is a stop for vLLM (transformers: "length")
    ok = used <= max_tokens and reason in ("stop", "length") and (reason == "stop" or used == max_tokens)
    return _row("limits", prompt, ok, f"{used} of max_tokens {max_tokens}, finish_reason {reason!r}")


def usage_row(prompt: str, answer: Answer, prompt_tokens: int | None,
              count_text: Callable[[str], int | None] | None, counter: str = "the tokenizer") -> dict[str, Any]:
    """The server's prompt count equals the tokenizer's; its completion count equals the answer's token
    ids, or the text's tokens plus at most one (an end token the text does not show)."""
    usage = answer.usage
    if not usage:
        return _row("usage", prompt, False, "no usage in the answer")
    said = f"usage {usage.get('prompt_tokens')} + {usage.get('completion_tokens')}"
    problems = []
    if prompt_tokens is not None and usage.get("prompt_tokens") != prompt_tokens:
        problems.append(f"{counter} counts {prompt_tokens} prompt tokens")
    completion = usage.get("completion_tokens")
    if answer.token_ids is not None:
        if completion != len(answer.token_ids):
            problems.append(f"the answer has {len(answer.token_ids)} token ids")
    elif count_text is not None and completion is not None:
        counted = count_text(answer.text)
        if counted is not None and not 0 <= completion - counted <= 1:
            problems.append(f"the answer's text is {counted} tokens")
    if usage.get("total_tokens") not in (None, (usage.get("prompt_tokens") or 0) + (completion or 0)):
        problems.append(f"total_tokens {usage['total_tokens']} is not their sum")
    return _row("usage", prompt, not problems, said + ("; " + "; ".join(problems) if problems else
                                                         f": consistent with {counter}" if count_text else ""))


def check_answers(endpoint: Endpoint, asked: list[tuple[str, Any, str, Answer]], max_tokens: int,
                  prompt_tokens: Callable[[str, Any], int | None],
                  count_text: Callable[[str], int | None] | None, counter: str = "the tokenizer") -> list[dict[str, Any]]:
    """`asked`: (kind, prompt as sent, prompt as shown, its plain greedy answer) of every smoke prompt;
    `counter` names what counts tokens (the tokenizer here, or the server's /tokenize)."""
    rows: list[dict[str, Any]] = []
    with endpoint.client() as client:
        for kind, prompt, shown, first in asked:
            if not first.ok:
                continue
            again = ask(client, endpoint, kind, prompt, max_tokens)
            same = again.ok and again.text == first.text and again.token_ids == first.token_ids
            rows.append(_row("repeat", shown, same, "the same answer" if same else
                             f"asked again: {again.error or repr(again.text[:60])} vs {first.text[:60]!r}"))
            streamed = ask(client, endpoint, kind, prompt, max_tokens, stream=True)
            equal = streamed.ok and streamed.text == first.text and streamed.finish_reason == first.finish_reason
            detail = ("equal to the plain answer" if equal else
                      f"streamed: {streamed.error or repr(streamed.text[:60])} (finish_reason "
                      f"{streamed.finish_reason!r}) vs {first.text[:60]!r} ({first.finish_reason!r})")
            if streamed.ok and not streamed.done:
                detail += "; the stream closes without data: [DONE] after its finish_reason"
            rows.append(_row("stream", shown, equal, detail))
            rows.append(limits_row(shown, first, max_tokens))
            rows.append(usage_row(shown, first, prompt_tokens(kind, prompt), count_text, counter))
        stop = _stop_check(client, endpoint, asked, max_tokens)
        if stop is not None:
            rows.append(stop)
    return rows


def _stop_check(client, endpoint: Endpoint, asked, max_tokens: int) -> dict[str, Any] | None:
    """A stop string from inside a greedy answer of three words or more (its second word, with the space
    before it): the answer must end just before its first occurrence, with finish_reason "stop" (OpenAI
    leaves the stop string out)."""
    for kind, prompt, shown, first in asked:
        chosen = stop_string(first.text) if first.ok else None
        if chosen is None:
            continue
        stop, cut = chosen
        answer = ask(client, endpoint, kind, prompt, max_tokens, stop=[stop])
        ok = answer.ok and answer.text == cut and answer.finish_reason == "stop"
        return _row("stop", shown, ok, f"stop {stop!r}: " + ("ended before it, finish_reason 'stop'" if ok else
                    f"{answer.error or repr(answer.text[:60])} (finish_reason {answer.finish_reason!r}), "
                    f"expected {cut!r}"))
    return None


def stop_string(text: str) -> tuple[str, str] | None:
    """For an answer of three words or more: its second word with the whitespace before it (a space, a
    newline: as it is in the text), and the text before that string's first occurrence."""
    second = _SECOND_WORD.match(text)
    if second is None:
        return None
    stop = second.group(1)
    return stop, text[:text.index(stop)]


def summarize_checks(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per check: how many prompts passed and the first failure's detail."""
    out = {}
    for check in CHECKS:
        mine = [r for r in rows if r["check"] == check]
        if not mine:
            continue
        bad = [r for r in mine if not r["ok"]]
        out[check] = {"passed": len(mine) - len(bad), "checked": len(mine),
                      "first_failure": f"{bad[0]['prompt']!r}: {bad[0]['detail']}" if bad else None,
                      "detail": mine[0]["detail"]}
    return out
