"""What `convert` asks before it publishes: would the target engine load this output? Preflight runs
on the finished work directory; an error about the files themselves (a KeyError the loader would
raise, a part its method lacks, a dtype its kernel refuses) stops the rename, so nothing the engine
would refuse is ever published. Deployment findings (the SoC, the support matrix, NZ settings) and
warnings are returned for the convert report instead: they belong to where the model is served."""

from __future__ import annotations

from pathlib import Path

from ascend_common.errors import CheckFailed

#: `--engine none`: publish without asking (an output for ascendkit's own runtime, or another engine).
NO_ENGINE = "none"


def check_before_publish(work: Path, out: Path, soc: str, engine: str, quantized: bool) -> list[str]:
    """Raise CheckFailed on a checkpoint error; return the other findings' lines."""
    if engine == NO_ENGINE:
        return []
    from .run import run_preflight

    result = run_preflight(work, soc=soc, engine=engine, quantization=quantized or None)
    refused = [f for f in result.errors if result.rules.rules[f.rule].scope == "checkpoint"]
    if refused:
        more = f" (and {len(refused) - 1} more: `ascendkit preflight {work}`)" if len(refused) > 1 else ""
        raise CheckFailed(f"{out}: {result.rules.name} would not load this output, so it is not published: "
                          f"{refused[0].line}{more}; --engine none publishes it for another loader")
    return [f"preflight {result.rules.name}, {f.rule}" + (" (an error where it is served)" if f.severity == "error" else "")
            + f": {f.subject}: {f.message}" for f in result.findings]
