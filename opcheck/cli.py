"""`ascendkit manifest build`: generate an operator manifest from its real source."""

from __future__ import annotations

from pathlib import Path

import click

from ascend_convert.cli import SOC_CHOICES
from ascend_convert.cli_support import debug_option


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
@click.option("--torch-npu", "version", default="2.14.0", show_default=True, help="The torch_npu release described.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Where to write the JSON manifest.")
@debug_option
def build_command(codegen: Path | None, installed: bool, op_plugin: Path | None, onnx_yaml: Path | None,
                  version: str, out: Path) -> int:
    """Generate a manifest from exactly one source."""
    from ascend_convert.errors import UserError

    from .manifests import build_from_codegen, build_from_op_plugin, build_onnx, write_manifest

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
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="HF or converted checkpoint directory (only config.json is read).")
@click.option("--soc", type=click.Choice(SOC_CHOICES), default="ascend910b", show_default=True)
@click.option("--dtype", type=click.Choice(("auto", "float16", "bfloat16", "float32")), default="auto",
              show_default=True, help="auto: the dtype config.json names.")
@click.option("--torch-npu", "version", default="2.14.0", show_default=True, help="Target torch_npu release.")
@click.option("--manifest", "manifest_file", type=click.Path(path_type=Path),
              help="A manifest from `ascendkit manifest build` instead of a shipped one.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--seq-len", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--format", "fmt", type=click.Choice(("table", "json", "sarif", "junit", "markdown")), default="table",
              show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="Write the report here instead of stdout.")
@click.option("--summary-file", type=click.Path(path_type=Path), help="Also write a markdown summary (for CI).")
@click.option("--allow", "allow_file", type=click.Path(path_type=Path),
              help="Accepted findings, each with a reason (YAML/JSON: allow: [{op, reason, kind}]).")
@click.option("--trust-remote-code", is_flag=True, help="Allow a model's own Python code to run.")
@debug_option
def check_ops_command(model_dir: Path, soc: str, dtype: str, version: str, manifest_file: Path | None,
                      batch: int, seq_len: int, fmt: str, output: Path | None, summary_file: Path | None,
                      allow_file: Path | None, trust_remote_code: bool) -> int:
    """Name every operator of a model with no NPU kernel in the target torch_npu (exit 1 if any)."""
    from ascend_convert.errors import UserError
    from ascend_convert.soc import get_soc

    from .allow import load_allow, split
    from .classify import Classifier
    from .hf_trace import config_dtype, export_prefill, load_config
    from .manifests import SHIPPED, load_manifest, shipped_path
    from .report import markdown, render
    from .trace import findings, ops_in

    if not model_dir.is_dir():
        raise UserError(f"{model_dir}: no such directory")
    if manifest_file is None:
        if version not in SHIPPED:
            shipped = ", ".join(v for v in SHIPPED if v != "onnx")
            raise UserError(f"--torch-npu {version}: no shipped manifest (shipped: {shipped}); "
                            f"build one with `ascendkit manifest build` and pass --manifest")
        manifest_file = shipped_path(SHIPPED[version])
    manifest = load_manifest(manifest_file, "torch_npu")
    allowed = load_allow(allow_file) if allow_file else {}
    config = load_config(model_dir, trust_remote_code)
    trace_dtype = config_dtype(model_dir) if dtype == "auto" else dtype
    program = export_prefill(model_dir, config, trace_dtype, batch, seq_len, trust_remote_code)
    uses = ops_in(program)
    found, accepted = split(findings(uses, Classifier(manifest), get_soc(soc).dtypes), allowed)
    target = {"soc": soc, "dtype": trace_dtype, "torch_npu": manifest["torch_npu"], "manifest": str(manifest_file),
              "shapes": {"prefill": [batch, seq_len]}, "allowed": accepted}
    text = render(fmt, str(model_dir), target, uses, found)
    if summary_file is not None:
        summary_file.write_text(markdown(str(model_dir), target, uses, found), encoding="utf-8")
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)
    return 1 if found else 0


def check_ops_main() -> None:
    from ascend_convert.cli_support import run_main

    run_main(check_ops_command, prog_name="check_ops")
