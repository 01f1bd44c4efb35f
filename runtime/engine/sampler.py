"""Pick the next token of every sequence in a batch from its logits.

Plain torch ops only (sort, cumsum, softmax, scatter, multinomial, argmax, topk), so the same code
runs on CPU, CUDA and Ascend NPUs through torch_npu, and ``check_ops --target runtime`` finds no
fallback op here.  The work is batched where that is easy (one argmax for all greedy rows, one
sort/softmax for all sampled rows, one draw for the unseeded rows); only seeded rows are drawn one by
one, because a per-request ``torch.Generator`` is what makes a seeded request reproducible whatever
else shares its batch.  Nothing is copied to the host until the end of a call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from runtime.sampling_params import SamplingParams


@dataclass
class SampleOutput:
    """One step's result: a token per row, and its logprobs where the request asked for them.

    ``logprobs[i]`` maps token id -> logprob for the chosen token (first) and the top-n tokens, so it
    has n or n + 1 entries; None where ``params[i].logprobs`` is None.
    """

    token_ids: list[int]
    logprobs: list[dict[int, float] | None]


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator seeded for one request, on the device the logits live on (None for no seed).

    The generator must live on the logits' device: ``torch.multinomial`` refuses a generator of
    another device type.  Keep it for the whole request so successive steps continue one stream.
    """
    if seed is None:
        return None
    generator = torch.Generator(device=torch.device(device))
    generator.manual_seed(seed)
    return generator


def _index(rows: list[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long, device=device)


def _row_values(values: list[float] | list[int], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    # [rows, 1] so it broadcasts over the vocabulary.
    return torch.tensor(values, dtype=dtype, device=device).unsqueeze(1)


def filtered_probs(logits: torch.Tensor, temperature: list[float], top_k: list[int],
                   top_p: list[float]) -> torch.Tensor:
    """softmax(logits / T) restricted to each row's top-k and top-p set, renormalised.

    top_k <= 0 is off; top_p >= 1 is off.  The top-p set is the smallest prefix of the tokens sorted by
    probability whose mass reaches top_p: a token is kept when the mass strictly above it is still
    below top_p, so the most likely token is always kept.  The sort is stable, so among equal logits
    the lowest id ranks first, the same tie rule as ``torch.argmax``: top_k=1 or a tiny top_p is then
    exactly greedy.  top-k is applied before top-p (vLLM's order): top_p is a share of the mass that
    survives top-k.
    """
    vocab = logits.shape[1]
    scaled = logits / _row_values(temperature, logits.device, logits.dtype)
    use_k = any(0 < k < vocab for k in top_k)
    use_p = any(p < 1.0 for p in top_p)
    if not (use_k or use_p):
        return torch.softmax(scaled, dim=-1)

    ranked, order = scaled.sort(dim=-1, descending=True, stable=True)
    rank = torch.arange(vocab, device=logits.device).unsqueeze(0)
    if use_k:
        k = _row_values([k if 0 < k < vocab else vocab for k in top_k], logits.device, torch.long)
        ranked = ranked.masked_fill(rank >= k, float("-inf"))
    if use_p:
        probs = torch.softmax(ranked, dim=-1)
        mass_above = torch.cumsum(probs, dim=-1) - probs
        p = _row_values(top_p, logits.device, probs.dtype)
        # p >= 1 rows keep everything: float rounding can push the cumulative mass to 1.0 before the
        # tail, and "off" must not drop the tail's tiny probabilities.
        drop = (mass_above >= p) & (p < 1.0) & (rank > 0)
        ranked = ranked.masked_fill(drop, float("-inf"))
    filtered = torch.full_like(scaled, float("-inf")).scatter(-1, order, ranked)
    return torch.softmax(filtered, dim=-1)


class Sampler:
    """Greedy or temperature/top-k/top-p sampling per row, with optional top-n logprobs.

    Logprobs are ``log_softmax`` of the raw logits (before temperature, top-k/top-p and suppression),
    which is what vLLM reports by default (``logprobs_mode="raw_logprobs"``).
    """

    def __call__(self, logits: torch.Tensor, params: Sequence[SamplingParams],
                 generators: Sequence[torch.Generator | None] | None = None,
                 suppress: Sequence[Sequence[int] | None] | None = None) -> SampleOutput:
        """Sample one token per row of ``logits`` [n, vocab].

        ``generators[i]`` (from :func:`make_generator`) draws row i on its own, reproducibly; rows
        without one share a single batched draw from torch's default generator.  ``suppress[i]``
        lists token ids row i must not produce this step: the engine passes EOS and the stop token
        ids while a request is still under its ``min_tokens``.
        """
        if logits.dim() != 2:
            raise ValueError(f"logits must be [num_seqs, vocab], got shape {tuple(logits.shape)}")
        n = logits.shape[0]
        generators = [None] * n if generators is None else list(generators)
        if len(params) != n or len(generators) != n or (suppress is not None and len(suppress) != n):
            raise ValueError(f"{n} logit rows need {n} params/generators/suppress entries, got "
                             f"{len(params)}/{len(generators)}/{'-' if suppress is None else len(suppress)}")
        raw = logits.float()
        masked = _suppress(raw, suppress) if suppress is not None else raw
        token_ids = torch.empty(n, dtype=torch.long, device=raw.device)

        greedy = [i for i, p in enumerate(params) if p.greedy]
        sampled = [i for i, p in enumerate(params) if not p.greedy]
        if len(greedy) == n:
            token_ids = masked.argmax(dim=-1)
        elif greedy:
            rows = _index(greedy, raw.device)
            token_ids[rows] = masked[rows].argmax(dim=-1)
        if sampled:
            rows = _index(sampled, raw.device)
            probs = filtered_probs(masked[rows], [params[i].temperature for i in sampled],
                                   [params[i].top_k for i in sampled], [params[i].top_p for i in sampled])
            token_ids[rows] = _draw(probs, [generators[i] for i in sampled])

        wants_logprobs = [i for i, p in enumerate(params) if p.logprobs is not None]
        if not wants_logprobs:
            return SampleOutput(token_ids.tolist(), [None] * n)
        return _with_logprobs(raw, token_ids, params, wants_logprobs)


def _suppress(logits: torch.Tensor, suppress: Sequence[Sequence[int] | None]) -> torch.Tensor:
    """A copy of ``logits`` with the listed (row, token) entries at -inf; ids outside the vocab are
    ignored, so a padded vocabulary or a tokenizer-only id cannot raise here."""
    vocab = logits.shape[1]
    pairs = [(row, tok) for row, ids in enumerate(suppress) for tok in (ids or ()) if 0 <= tok < vocab]
    if not pairs:
        return logits
    rows, toks = zip(*pairs)
    out = logits.clone()
    out[_index(list(rows), logits.device), _index(list(toks), logits.device)] = float("-inf")
    return out


def _draw(probs: torch.Tensor, generators: list[torch.Generator | None]) -> torch.Tensor:
    """One token per row of ``probs``: seeded rows one by one with their own generator (so what they
    draw does not depend on the other rows), the rest in one batched multinomial."""
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    free = [j for j, g in enumerate(generators) if g is None]
    if free:
        rows = _index(free, probs.device)
        out[rows] = torch.multinomial(probs[rows], 1).squeeze(1)
    for j, g in enumerate(generators):
        if g is None:
            continue
        row = probs[j]
        if row.device != g.device:
            # A generator made for another device: draw there rather than fail mid-batch.
            row = row.to(g.device)
        out[j] = torch.multinomial(row, 1, generator=g).to(probs.device)[0]
    return out


def _with_logprobs(raw: torch.Tensor, token_ids: torch.Tensor, params: Sequence[SamplingParams],
                   rows: list[int]) -> SampleOutput:
    """Attach {token: logprob} for the chosen token and the top-n to the rows that asked."""
    index = _index(rows, raw.device)
    entries = logprob_entries(raw[index], token_ids[index], [params[i].logprobs or 0 for i in rows])
    out: list[dict[int, float] | None] = [None] * len(params)
    for k, i in enumerate(rows):
        out[i] = entries[k]
    return SampleOutput(token_ids.tolist(), out)


def logprob_entries(logits: torch.Tensor, token_ids: torch.Tensor, top_n: list[int]) -> list[dict[int, float]]:
    """For row k of ``logits`` [n, vocab]: {token_ids[k]: its logprob} followed by the ``top_n[k]``
    most likely tokens' logprobs (the chosen token first, so it is there even when it is not among
    them).  Sampled tokens and prompt tokens (``prompt_logprobs``) are both reported this way."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(1, token_ids.unsqueeze(1)).squeeze(1).tolist()
    ids = token_ids.tolist()
    widest = min(max(top_n, default=0), logits.shape[1])
    top_values, top_ids = logprobs.topk(widest, dim=-1) if widest else (None, None)
    values_host = top_values.tolist() if top_values is not None else None
    ids_host = top_ids.tolist() if top_ids is not None else None
    out = []
    for k, token in enumerate(ids):
        entry = {token: chosen[k]}
        if top_n[k] and ids_host is not None and values_host is not None:
            entry.update(zip(ids_host[k][:top_n[k]], values_host[k][:top_n[k]]))
        out.append(entry)
    return out
