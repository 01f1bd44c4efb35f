"""`ascendkit manifest build`: generate an operator manifest from its real source."""

from __future__ import annotations

from pathlib import Path

import click

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
