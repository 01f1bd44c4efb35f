"""What `ascendkit bench` runs: the named workloads (single, batch16, batch64, prefix), the sweep's
batch sizes, and their seeded prompts — the same token ids for every system, new ones each repeat.

Apart from the systems and the runner so that the command checks its options (`parse_list`,
`parse_sizes`) and shows its defaults without importing anything heavy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ascend_common.errors import UserError

WORKLOADS = ("single", "batch16", "batch64", "prefix")
BASELINES = ("hf", "hf-batch", "llama-cpp")
#: Systems `--baselines` also takes but does not run unless named: the runtime with `compile_decode`
#: (its graphs take a minute to build on two cores).
OPT_IN_BASELINES = ("runtime-compiled",)
SWEEP_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
DEFAULT_PROMPT_LEN = 128
DEFAULT_NEW_TOKENS = 128
PREFIX_REQUESTS = 16
PREFIX_FACTOR = 4  # the shared prefix is 4 × --prompt-len tokens (512 by default)
LOW_TOKEN_ID = 100  # prompt ids are drawn above the usual special-token range


@dataclass(frozen=True)
class Workload:
    """A set of requests submitted together: their prompt lengths and how many tokens each generates."""

    name: str
    description: str
    prompt_lens: tuple[int, ...]
    new_tokens: int
    prefix_len: int = 0  # tokens every prompt shares at its start (part of prompt_lens)

    @property
    def num_requests(self) -> int:
        return len(self.prompt_lens)

    def prompts(self, vocab: int, seed: int, rep: int) -> list[list[int]]:
        """Seeded token ids, new ones each repeat (so no run is served by the previous run's prefix
        cache); the lengths, hence the work, stay the same."""
        rng = random.Random(f"{seed}:{self.name}:{rep}")
        low = min(LOW_TOKEN_ID, vocab // 2)
        prefix = [rng.randrange(low, vocab) for _ in range(self.prefix_len)]
        return [prefix + [rng.randrange(low, vocab) for _ in range(n - self.prefix_len)] for n in self.prompt_lens]

    def primer(self, vocab: int, seed: int, rep: int) -> list[int]:
        """The shared prefix and a suffix of its own: run once, untimed, before the timed requests, as
        earlier traffic with the same system prompt would have."""
        prefix = self.prompts(vocab, seed, rep)[0][: self.prefix_len]
        rng = random.Random(f"{seed}:{self.name}:{rep}:primer")
        low = min(LOW_TOKEN_ID, vocab // 2)
        return prefix + [rng.randrange(low, vocab) for _ in range(max(1, self.prompt_lens[0] - self.prefix_len))]


def _mixed(name: str, count: int, prompt_len: int) -> tuple[int, ...]:
    """`count` prompt lengths from 1/4x to 2x `prompt_len`, the same for a name on every run."""
    rng = random.Random(f"lengths:{name}")
    return tuple(rng.randint(max(1, prompt_len // 4), 2 * prompt_len) for _ in range(count))


def make_workloads(names: list[str], prompt_len: int | None = None, new_tokens: int | None = None) -> list[Workload]:
    """The named workloads (checked by `parse_list`), sized from --prompt-len and --new-tokens."""
    length = prompt_len or DEFAULT_PROMPT_LEN
    new = new_tokens or DEFAULT_NEW_TOKENS
    out = []
    for name in names:
        if name == "single":
            out.append(Workload(name, f"1 request, {length} in / {new} out", (length,), new))
        elif name in ("batch16", "batch64"):
            count = int(name[5:])
            lens = _mixed(name, count, length)
            out.append(Workload(name, f"{count} requests, {min(lens)}-{max(lens)} in / {new} out", lens, new))
        elif name == "prefix":
            prefix = PREFIX_FACTOR * length
            rng = random.Random("lengths:prefix")
            lens = tuple(prefix + rng.randint(max(1, length // 16), max(1, length // 4)) for _ in range(PREFIX_REQUESTS))
            n = max(2, new // 4)
            out.append(Workload(name, f"{PREFIX_REQUESTS} requests sharing a {prefix}-token prefix, "
                                      f"{min(lens)}-{max(lens)} in / {n} out", lens, n, prefix))
        else:  # parse_list has checked the names
            raise AssertionError(name)
    return out


def sweep_workloads(sizes: list[int], prompt_len: int | None, new_tokens: int | None) -> list[Workload]:
    """One workload per batch size, every prompt the same length: only the batch size varies."""
    length = prompt_len or DEFAULT_PROMPT_LEN
    new = new_tokens or DEFAULT_NEW_TOKENS
    return [Workload(f"sweep{n}", f"{n} requests, {length} in / {new} out", (length,) * n, new) for n in sizes]


def parse_list(value: str, allowed: tuple[str, ...], option: str) -> list[str]:
    """A comma list of names from `allowed`, duplicates dropped; a one-line error naming `option`."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise UserError(f"{option}: give at least one of {', '.join(allowed)}")
    for name in names:
        if name not in allowed:
            raise UserError(f"{option}: unknown name {name!r} (expected {', '.join(allowed)})")
    return list(dict.fromkeys(names))


def parse_sizes(value: str, option: str = "--sweep-sizes") -> list[int]:
    """A comma list of positive sizes, sorted and unique; a one-line error naming `option`."""
    try:
        sizes = sorted({int(v) for v in value.split(",") if v.strip()})
    except ValueError:
        raise UserError(f"{option} {value!r}: expected a comma list of sizes, e.g. 1,2,4,8") from None
    if not sizes or sizes[0] < 1:
        raise UserError(f"{option} {value!r}: sizes must be at least 1")
    return sizes

