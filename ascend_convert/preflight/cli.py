"""`ascendkit preflight DIR` (alias `preflight`): will this checkpoint load in the target engine."""

from __future__ import annotations

from pathlib import Path

import click

from ascend_common.cli_support import debug_option, report_options
from ascend_common.soc import SOC_CHOICES

from .ruleset import DEFAULT_ENGINE


@click.command("preflight")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--soc", type=click.Choice(SOC_CHOICES), default="ascend910b", show_default=True)
@click.option("--tp", type=click.IntRange(min=1), default=1, show_default=True, help="Tensor-parallel size.")
@click.option("--ep", type=click.IntRange(min=1), default=1, show_default=True,
              help="Expert-parallel size (experts whole on their rank; MoE layers not split by --tp).")
@click.option("--dtype", type=click.Choice(("auto", "bfloat16", "float16")), default="auto", show_default=True,
              help="The engine's --dtype (auto: config.json's).")
@click.option("--engine", default=DEFAULT_ENGINE, show_default=True, metavar="NAME[@RELEASE]",
              help="A shipped rule set: the engine and the release its loader was read from (newest without @).")
@click.option("--rules", "rules_file", type=click.Path(path_type=Path), help="A rule set file instead of a shipped one.")
@click.option("--quantization", type=click.Choice(("ascend",)), default=None,
              help="Served with --quantization ascend (a quantized checkpoint is found from its files anyway).")
@click.option("--nz-mode", type=click.IntRange(0, 2), default=None,
              help="VLLM_ASCEND_ENABLE_NZ (0 off, 1 quantized weights, 2 float weights too) [default: the engine's].")
@click.option("--hash", "rehash", is_flag=True, help="Re-hash every file ascend_manifest.json records (sha256).")
@report_options("{rule, subject, reason}")
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1).")
@debug_option
def preflight_command(model: Path, soc: str, tp: int, ep: int, dtype: str, engine: str, rules_file: Path | None,
                      quantization: str | None, nz_mode: int | None, rehash: bool, fmt: str, output: Path | None,
                      summary_file: Path | None, allow_file: Path | None, strict: bool) -> int:
    """Check a checkpoint directory against the target engine's loader rules, from config.json, the
    JSON files and the safetensors headers only (exit 0 clean, 1 findings, 2 unusable input)."""
    from ascend_common.allow_file import load_allow_entries
    from ascend_common.cli_support import emit_report

    from .report import markdown, render
    from .run import run_preflight

    allowed = load_allow_entries(allow_file, ("rule", "reason"), ("subject",)) if allow_file else []
    result = run_preflight(model, soc=soc, dtype=dtype, tp=tp, ep=ep, quantization=quantization == "ascend" or None,
                           engine=engine, rules_file=rules_file, nz_mode=nz_mode, rehash=rehash, allowed=allowed)
    emit_report(render(fmt, result), output, summary_file, markdown(result) if summary_file else "")
    return result.exit_code(strict)


def preflight_main() -> None:
    from ascend_common.cli_support import run_main

    run_main(preflight_command, prog_name="preflight")
