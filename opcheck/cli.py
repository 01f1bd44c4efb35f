"""`ascendkit manifest build`: generate an operator manifest from its real source."""

from __future__ import annotations

from pathlib import Path

import click

from ascend_common.cli_support import (
    debug_option,
    output_file,
    report_options,
    skip_teardown,
)
from ascend_common.soc import SOC_CHOICES

from .manifests import DEFAULT_TORCH_NPU


@click.group("manifest")
def manifest_group() -> None:
    """Operator manifests (NPU kernels per torch_npu release, ATC's ONNX operators)."""


@manifest_group.command("build")
@click.option("--codegen", "codegen", type=click.Path(path_type=Path),
              help="torch_npu's npu_native_functions_by_codegen.yaml, or a torch_npu wheel (.whl).")
@click.option("--installed", is_flag=True, help="Read the codegen yaml of the installed torch_npu.")
@click.option("--op-plugin", "op_plugin", type=click.Path(path_type=Path),
              help="op-plugin's op_plugin_functions.yaml (any torch_npu v2.1 … v2.15).")
@click.option("--onnx", "onnx_yaml", type=click.Path(path_type=Path), help="msit's onnx.yaml (ATC's ONNX operators).")
@click.option("--torch-npu", "version", default=DEFAULT_TORCH_NPU, show_default=True,
              help="The torch_npu release described.")
@click.option("--out", required=True, type=click.Path(path_type=Path), callback=output_file,
              help="Where to write the JSON manifest.")
@debug_option
def build_command(codegen: Path | None, installed: bool, op_plugin: Path | None, onnx_yaml: Path | None,
                  version: str, out: Path) -> int:
    """Generate a manifest from exactly one source."""
    from ascend_common.errors import UserError

    from .manifests import (
        build_from_codegen,
        build_from_op_plugin,
        build_onnx,
        write_manifest,
    )

    chosen = [name for name, value in (("--codegen", codegen), ("--installed", installed),
                                       ("--op-plugin", op_plugin), ("--onnx", onnx_yaml)) if value]
    if len(chosen) != 1:
        raise UserError(f"give exactly one source: --codegen, --installed, --op-plugin or --onnx (got {len(chosen)})")
    if onnx_yaml:
        manifest = build_onnx(onnx_yaml)
    elif op_plugin:
        manifest = build_from_op_plugin(op_plugin, version)
    else:
        manifest = build_from_codegen(codegen, version)
    write_manifest(manifest, out)
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in manifest["counts"].items())
    click.echo(f"wrote {out}: {manifest['kind']} manifest ({counts})")
    return 0


@click.command("check-ops")
@click.option("--model", "model", metavar="DIR|FILE.onnx|FILE.pt2|MODULE:FUNCTION|FILE.gguf",
              help="An HF or converted checkpoint directory (only config.json is read), an ONNX model, an exported "
                   "program, or a function returning (model, example_args[, example_kwargs]). With --target runtime: "
                   "a checkpoint directory or .gguf file giving the shapes (default: the SmolLM2-135M GGUF).")
@click.option("--target", type=click.Choice(("hf", "runtime")), default="hf", show_default=True,
              help="hf: the transformers model of --model. runtime: this project's own runtime model (paged "
                   "attention, prefill and decode steps) built from --model's config.")
@click.option("--soc", type=click.Choice(SOC_CHOICES), default="ascend910b", show_default=True)
@click.option("--dtype", type=click.Choice(("auto", "float16", "bfloat16", "float32")), default="auto",
              show_default=True, help="auto: the dtype config.json names (directories only; with --target "
                   "runtime, the checkpoint's config, GGUF included), float32 where it names none.")
@click.option("--torch-npu", "version", default=DEFAULT_TORCH_NPU, show_default=True, help="Target torch_npu release.")
@click.option("--manifest", "manifest_file", type=click.Path(path_type=Path),
              help="A manifest from `ascendkit manifest build` instead of a shipped one.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--seq-len", default=16, show_default=True, type=click.IntRange(min=1),
              help="Prefill length, and the cached length the decode step attends to.")
@report_options("{op, reason, kind}")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a model's own Python code to run, and pickled entries of a .pt2 to be read.")
@debug_option
def check_ops_command(model: str | None, target: str, soc: str, dtype: str, version: str,
                      manifest_file: Path | None, batch: int, seq_len: int, fmt: str, output: Path | None,
                      summary_file: Path | None, allow_file: Path | None, trust_remote_code: bool) -> int:
    """Name every operator of a model with no NPU kernel in the target torch_npu (exit 1 if any)."""
    from ascend_common.cli_support import emit_report

    from .allow import load_allow
    from .check import run_check
    from .report import markdown, render

    allowed = load_allow(allow_file) if allow_file else {}
    r = run_check(model, target, soc=soc, dtype=dtype, version=version, manifest_file=manifest_file, batch=batch,
                  seq_len=seq_len, trust_remote_code=trust_remote_code, allowed=allowed)
    target_info, uses, found, fusions, label = r.target, r.uses, r.found, r.fusions, r.label
    # the human-readable reports say which model was traced; JSON/SARIF/JUnit keep the path (and JSON the
    # target's "model" field)
    text = render(fmt, label if fmt in ("table", "markdown") else r.model, target_info, uses, found, fusions)
    emit_report(text, output, summary_file, markdown(label, target_info, uses, found, fusions) if summary_file else "")
    skip_teardown()
    return 1 if found else 0


def check_ops_main() -> None:
    from ascend_common.cli_support import run_main

    run_main(check_ops_command, prog_name="check_ops")
