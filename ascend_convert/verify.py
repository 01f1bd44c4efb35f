"""`verify OUT`: prove a converted directory is what its manifest says, and what its source holds.

1. every file in the manifest re-hashed (sha256 and size), no unlisted weight file;
2. every tensor read back with safetensors: dtype, shape and sha256 as recorded;
3. with a source: each tensor equals the checked cast of its source tensor bit for bit, so its
   error is exactly the cast's rounding (recorded per tensor, re-checked against half an ulp);
4. with `--logits`: both models run on a few prompts and their logits are compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from ascend_common.errors import CheckFailed, UserError

from .arch import find_spec
from .cast import CastStats, cast_error_bound, checked_cast
from .convert_options import ConvertOptions
from .dtypes import TORCH_DTYPES, dtype_name
from .layout_names import (
    CONFIG_NAME,
    MANIFEST_NAME,
    QUANT_DESCRIPTION_NAME,
    SMOOTHING_NAME,
    WEIGHT_FILE_GLOBS,
)
from .manifest import file_record, read_manifest
from .quant_layout import check_description, read_description
from .quantize import ActivationQuant, quantized_tensors
from .readers import CheckpointReader, open_checkpoint, read_config
from .safetensors_writer import sha256_bytes, tensor_bytes
from .smoothing import Smoothing

LOGIT_PROMPTS = ("The capital of France is", "def fibonacci(n):", "Ascend NPUs serve large language models")
# Logit tolerance relative to the largest source logit, by target dtype: a cast's rounding, grown
# through the layers. float32 → float32 is exact, so its tolerance only absorbs summation order.
LOGIT_RTOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 8e-2}


@dataclass
class VerifyReport:
    out: Path
    files_checked: int = 0
    tensors_checked: int = 0
    source_checked: int = 0
    max_abs_error: float = 0.0
    logits: dict | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def verify(out: Path, source: Path | None = None, logits: bool = False, stop_at_first: bool = True,
           source_reader: CheckpointReader | None = None) -> VerifyReport:
    """`source_reader`: the source already opened (a conversion's `plan.reader`), so a caller that
    converts and then verifies in one process does not open it twice — opening a GGUF costs seconds
    (transformers reads its config through the whole metadata, SmolLM2's 49k-token vocabulary
    included). Its tensors are still read again from the file."""
    out = Path(out)
    if not out.is_dir():
        raise UserError(f"{out}: no such directory")
    manifest = read_manifest(out)
    report = VerifyReport(out)

    def fail(message: str) -> None:
        report.failures.append(message)
        if stop_at_first:
            raise CheckFailed(message)

    if manifest["target"].get("layout") == "quantized":  # first: it says what vllm-ascend would refuse
        _check_description(out, fail)
    _check_files(out, manifest, report, fail)
    read_back = _check_tensors(out, manifest, report, fail)
    packed = manifest["target"].get("layout") == "packed"
    if packed:
        _check_rank_tensors(out, manifest, report, fail)
    if source is not None:
        if packed:
            _check_packed_source(Path(source), out, manifest, report, fail, source_reader)
        else:
            _check_source(Path(source), manifest, read_back, report, fail, source_reader)
    if logits:
        if source is None:
            raise UserError("--logits needs --source SRC to compare against")
        if packed:
            raise UserError(f"{out}: --logits loads the output with transformers, which does not read the packed "
                            f"tensor-parallel layout; the per-rank check with --source covers it")
        if manifest["target"].get("layout") == "quantized":
            raise UserError(f"{out}: --logits loads the output with transformers, which does not read "
                            f"msModelSlim's quantized layout; the per-tensor check with --source covers it")
        report.logits = compare_logits(Path(source), out, manifest["target"]["dtype"])
        if not report.logits["ok"]:
            fail(f"logits differ from the source: max abs diff {report.logits['max_abs_diff']:.4g} > "
                 f"tolerance {report.logits['tolerance']:.4g}")
    return report


def _check_files(out: Path, manifest: dict, report: VerifyReport, fail) -> None:
    for name, record in manifest["files"].items():
        path = out / name
        if not path.is_file():
            fail(f"{path}: missing (listed in {MANIFEST_NAME})")
            continue
        actual = file_record(path)
        if actual != record:
            fail(f"{path}: sha256 {actual['sha256'][:16]}… size {actual['size']} differ from the manifest "
                 f"({record['sha256'][:16]}… size {record['size']})")
        report.files_checked += 1
    for path in sorted(p for pattern in WEIGHT_FILE_GLOBS for p in out.glob(pattern)):
        if path.relative_to(out).as_posix() not in manifest["files"]:
            fail(f"{path}: weight file not listed in {MANIFEST_NAME}")


def _check_description(out: Path, fail) -> None:
    """The quant description as vllm-ascend's loader will judge it (one type per fused module and
    per layer's experts): a description edited after conversion, or regenerated with its manifest,
    is caught here rather than at load time on the NPU."""
    try:
        description = read_description(out)
        if description is None:
            fail(f"{out / QUANT_DESCRIPTION_NAME}: missing (a quantized output needs its description)")
            return
        spec = find_spec(read_config(out), where=str(out / CONFIG_NAME))
        check_description(description, spec, str(out / QUANT_DESCRIPTION_NAME))
    except UserError as exc:
        fail(str(exc))


def _check_tensors(out: Path, manifest: dict, report: VerifyReport, fail) -> dict[str, str]:
    """Re-hash each tensor; returns tensor name → file for the source comparison."""
    by_file: dict[str, dict[str, dict]] = {}
    for name, record in manifest["tensors"].items():
        by_file.setdefault(record["file"], {})[name] = record
    for file, records in by_file.items():
        _check_file_tensors(out / file, records, report, fail)
    return {name: r["file"] for name, r in manifest["tensors"].items()}


def _check_file_tensors(path: Path, records: dict[str, dict], report: VerifyReport, fail) -> None:
    """Each tensor of one weight file has the dtype, shape and sha256 its record says."""
    if not path.is_file():
        return  # already reported
    try:
        with safe_open(str(path), framework="pt") as handle:
            present = set(handle.keys())
            for name, record in records.items():
                if name not in present:
                    fail(f"{path}: tensor {name} missing")
                    continue
                tensor = handle.get_tensor(name)
                if dtype_name(tensor.dtype) != record["dtype"] or list(tensor.shape) != record["shape"]:
                    fail(f"{path}: tensor {name} is {dtype_name(tensor.dtype)}{list(tensor.shape)}, "
                         f"the manifest says {record['dtype']}{record['shape']}")
                elif sha256_bytes(tensor_bytes(tensor)) != record["sha256"]:
                    fail(f"{path}: tensor {name} sha256 differs from the manifest")
                report.tensors_checked += 1
    except SafetensorError as exc:
        fail(f"{path}: not a valid safetensors file ({exc})")


def _check_rank_tensors(out: Path, manifest: dict, report: VerifyReport, fail) -> None:
    """Re-hash every tensor of every rank file of a packed layout."""
    for file, records in manifest.get("rank_tensors", {}).items():
        _check_file_tensors(out / file, records, report, fail)


def _check_packed_source(source: Path, out: Path, manifest: dict, report: VerifyReport, fail,
                         reader: CheckpointReader | None) -> None:
    """Split the source again, rank by rank, exactly as the conversion did (from a plan made with
    the recorded options and target dtype), and compare."""
    from .packed import check_packed_source
    from .plan import make_plan

    reader = reader or open_checkpoint(source)
    try:
        recorded = manifest["options"]
        options = ConvertOptions(soc=recorded["soc"], dtype=manifest["target"]["dtype"],
                                 max_shard_size=recorded["max_shard_size"], on_overflow=recorded["on_overflow"],
                                 layout="packed", tp=recorded["tp"], nz=recorded["nz"],
                                 mtp=recorded.get("mtp", "keep"))
        plan = make_plan(source, out, options, reader=reader)
        report.source_checked += check_packed_source(plan, out, fail)
    finally:
        reader.close()


def _check_source(source: Path, manifest: dict, read_back: dict[str, str], report: VerifyReport, fail,
                  reader: CheckpointReader | None) -> None:
    reader = reader or open_checkpoint(source)
    on_overflow = manifest["options"]["on_overflow"]
    sources = {info.name: info for info in reader.tensors()}
    handles: dict[str, object] = {}
    # W8A8 with SmoothQuant: the scales the conversion folded in (their file is covered by the manifest)
    smoothing = Smoothing.load(report.out / SMOOTHING_NAME) if SMOOTHING_NAME in manifest["files"] else Smoothing()
    requantized: tuple[str, dict[str, torch.Tensor], dict] | None = None  # the last source weight's parts
    try:
        for name, record in manifest["tensors"].items():
            src_name = record["source"]["name"]
            info = sources.get(src_name)
            if info is None:
                fail(f"{source}: tensor {src_name} (source of {name}) not found")
                continue
            if read_back[name] not in handles:
                handles.clear()
                handles[read_back[name]] = safe_open(str(report.out / read_back[name]), framework="pt")
            got = handles[read_back[name]].get_tensor(name)
            if "quant" in record:
                # a weight's parts are consecutive: its source is read and quantized once for all of them
                if requantized is None or requantized[0] != src_name:
                    bias = sources.get(src_name.removesuffix(".weight") + ".bias")
                    requantized = (src_name, *_requantize(name, record["quant"],
                                                          smoothing.apply(src_name, reader.load(info)),
                                                          reader.load(bias) if bias is not None else None,
                                                          manifest["target"]["dtype"]))
                _check_quantized(name, record["quant"], got, *requantized[1:], fail)
                report.source_checked += 1
                continue
            src = smoothing.apply(src_name, reader.load(info))
            expected, stats = checked_cast(src, TORCH_DTYPES[record["dtype"]], on_overflow)
            if not same_bytes(got, expected):
                diff = (got.double() - src.double()).abs()
                fail(f"tensor {name}: differs from the source beyond the cast (max abs error {float(diff.max()):.4g})")
                continue
            if src.is_floating_point() and stats.max_abs_error:
                bound = cast_error_bound(float(src.double().abs().max()), record["dtype"])
                if stats.max_abs_error > bound:
                    fail(f"tensor {name}: cast error {stats.max_abs_error:.4g} exceeds half an ulp ({bound:.4g})")
            if CastStats(**record["cast"]).max_abs_error != stats.max_abs_error:
                fail(f"tensor {name}: recorded max abs error {record['cast']['max_abs_error']} != measured "
                     f"{stats.max_abs_error}")
            report.max_abs_error = max(report.max_abs_error, stats.max_abs_error)
            report.source_checked += 1
    finally:
        reader.close()


def _requantize(name: str, quant: dict, src: torch.Tensor, bias: torch.Tensor | None,
                model_dtype: str) -> tuple[dict[str, torch.Tensor], dict]:
    """What quantizing the source gives, part by part (deterministic; W8A8 with the recorded
    activation scale and offset; W8A16 and W8A8_DYNAMIC from the weight alone), and the weight's
    quantization error."""
    act = ActivationQuant(quant["input_scale"], quant["input_offset"]) if quant["type"] == "W8A8" else None
    parts, error = quantized_tensors(name, src, symmetric=quant["symmetric"], group_size=quant["group_size"], act=act,
                                     bias=bias, model_dtype=model_dtype)
    return parts, error.to_dict()


def _check_quantized(name: str, quant: dict, got: torch.Tensor, parts: dict[str, torch.Tensor], error: dict,
                     fail) -> None:
    """A quantized tensor must be exactly its part of the re-quantized source, and the weight's
    recorded error the measured one."""
    if not same_bytes(got, parts[quant["part"]]):
        fail(f"tensor {name}: differs from quantizing its source ({quant['type']}, group_size "
             f"{quant['group_size']}, {'symmetric' if quant['symmetric'] else 'asymmetric'})")
    elif "error" in quant and error != quant["error"]:
        fail(f"tensor {name}: recorded quantization error {quant['error']} != measured")


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-exact equality (NaN equals NaN of the same payload; -0.0 differs from 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


@torch.no_grad()
def compare_logits(source: Path, out: Path, target_dtype: str, prompts: tuple[str, ...] = LOGIT_PROMPTS) -> dict:
    """Forward both models in float32 on the prompts; compare logits and greedy next tokens."""
    from transformers import AutoTokenizer

    from .hf_model import build_hf_model

    tokenizer = AutoTokenizer.from_pretrained(str(out))
    results = []
    models = []
    for path in (source, out):
        reader = open_checkpoint(path)
        models.append(build_hf_model(reader, reader.spec))
        reader.close()
    max_diff, max_ref, agree, total = 0.0, 0.0, 0, 0
    vocab = min(m.config.vocab_size for m in models)
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt).input_ids])
        ids = ids.clamp(max=vocab - 1)
        ref, got = (m(input_ids=ids).logits[0].float() for m in models)
        max_diff = max(max_diff, float((ref - got).abs().max()))
        max_ref = max(max_ref, float(ref.abs().max()))
        agree += int((ref.argmax(-1) == got.argmax(-1)).sum())
        total += ref.shape[0]
        results.append(prompt)
    tolerance = LOGIT_RTOL[target_dtype] * max(1.0, max_ref)
    return {"prompts": len(prompts), "positions": total, "max_abs_diff": max_diff, "max_abs_logit": max_ref,
            "tolerance": tolerance, "top1_agreement": agree / total, "ok": max_diff <= tolerance}
