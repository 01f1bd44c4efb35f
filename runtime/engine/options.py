"""The engine's command-line options, shared by `serve`, `smoke` and anything else that builds an
`LLMEngine` from a command line, so each flag is spelled and checked once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from runtime.engine.scheduler import DEFAULT_PREFILL_WITH_DECODES
from runtime.model.config import MLA_DECODE

DEVICE_CHOICES = ("auto", "cpu", "cuda", "npu", "ascend")
DTYPE_CHOICES = ("auto", "float32", "float16", "bfloat16")

#: What an engine started by a command gets when a flag is not given (the flags' defaults; dtype None:
#: the checkpoint's own).
ENGINE_DEFAULTS: dict[str, Any] = {
    "device": "auto", "dtype": None, "max_num_seqs": 64, "max_model_len": None, "memory_policy": "static",
    "kv_cache_memory": "1GiB", "block_size": 16, "enable_prefix_caching": True, "tensor_parallel_size": 1,
    "trust_remote_code": False, "mla_decode": "auto", "prefill_tokens_with_decodes": DEFAULT_PREFILL_WITH_DECODES,
    "compile_decode": False,
}

_OPTIONS = (
    click.option("--device", type=click.Choice(DEVICE_CHOICES), default=ENGINE_DEFAULTS["device"], show_default=True,
                 help="auto: an NPU when torch_npu is importable, else CUDA, else the CPU."),
    click.option("--dtype", type=click.Choice(DTYPE_CHOICES), default="auto", show_default=True,
                 help="auto: the dtype the checkpoint's config names."),
    click.option("--max-num-seqs", type=click.IntRange(min=1), default=ENGINE_DEFAULTS["max_num_seqs"], show_default=True,
                 help="Requests in the running batch at most."),
    click.option("--max-model-len", type=click.IntRange(min=2), default=None,
                 help="Context length (prompt + output) [default: the model's]."),
    click.option("--memory-policy", type=click.Choice(("static", "dynamic")), default=ENGINE_DEFAULTS["memory_policy"],
                 show_default=True, help="static: allocate the whole KV pool at start; dynamic: grow it in chunks up to the budget."),
    click.option("--kv-cache-memory", default=ENGINE_DEFAULTS["kv_cache_memory"], show_default=True, help="The KV pool's budget, e.g. 2GiB."),
    click.option("--block-size", type=click.IntRange(min=1), default=ENGINE_DEFAULTS["block_size"], show_default=True,
                 help="Tokens per KV block."),
    click.option("--enable-prefix-caching/--no-enable-prefix-caching", default=ENGINE_DEFAULTS["enable_prefix_caching"], show_default=True),
    click.option("--tensor-parallel-size", type=click.IntRange(min=1), default=ENGINE_DEFAULTS["tensor_parallel_size"],
                 show_default=True),
    click.option("--prefill-tokens-with-decodes", type=click.IntRange(min=1),
                 default=ENGINE_DEFAULTS["prefill_tokens_with_decodes"], show_default=True,
                 help="Prompt tokens a step prefills while other requests decode (the rest wait for later "
                      "steps): lower keeps time per output token even under arrivals, higher admits prompts faster."),
    click.option("--trust-remote-code", is_flag=True, help="Allow a tokenizer that is remote code to run."),
    click.option("--mla-decode", type=click.Choice(("auto", *MLA_DECODE)), default=ENGINE_DEFAULTS["mla_decode"],
                 show_default=True,
                 help="Multi-head latent attention (DeepSeek-V2/V3): decode with the up-projections absorbed (vLLM's "
                      "way) or decompressed (transformers' op order, for bit-level comparisons). auto: absorbed; "
                      "decompressed for smoke, whose answers are compared with transformers'."),
    click.option("--compile-decode", is_flag=True,
                 help="Run decode steps through torch.compile (CPU or CUDA): faster at small batches, built at "
                      "start-up; its bf16 answers are as accurate as the default's but not bit-equal to "
                      "transformers'."),
)

_NAMES = tuple(ENGINE_DEFAULTS)


def engine_kwargs(**overrides: Any) -> dict[str, Any]:
    """Every `LLMEngine` keyword argument a command passes (`serve_args` turns them into flags): the
    defaults with `overrides`."""
    unknown = set(overrides) - set(ENGINE_DEFAULTS)
    if unknown:
        raise TypeError(f"not engine options: {', '.join(sorted(unknown))}")
    return {**ENGINE_DEFAULTS, **overrides}


def engine_options(command: Callable) -> Callable:
    """Add the engine's options to a click command; read them back with `engine_args(kwargs)`."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


def engine_args(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pop the engine's options out of a command's kwargs, as `LLMEngine` keyword arguments."""
    args = {name: kwargs.pop(name) for name in _NAMES}
    if args["dtype"] == "auto":
        args["dtype"] = None
    return args


def serve_args(args: dict[str, Any]) -> list[str]:
    """`LLMEngine` keyword arguments back as `serve` options (to start a server process with them)."""
    flags: list[str] = []
    for name, value in args.items():
        option = "--" + name.replace("_", "-")
        if name == "enable_prefix_caching":
            flags += [] if value else ["--no-enable-prefix-caching"]
        elif name in ("trust_remote_code", "compile_decode"):
            flags += [option] if value else []
        elif value is not None:
            flags += [option, str(value)]
    return flags
