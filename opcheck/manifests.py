"""Operator manifests: which aten overloads have an NPU kernel in a torch_npu release, and which
ONNX operators CANN's ATC converts — generated from the real sources, with their provenance.

Sources (see ../shared/data/README.md):
- torch_npu's `npu_native_functions_by_codegen.yaml` (a file, inside a downloaded wheel, or from the
  installed torch_npu): the overloads the NPU backend registers for that exact release;
- op-plugin's `op_plugin_functions.yaml`: every op with the torch_npu versions (v2.1 … v2.15) in
  which it has an `acl_op` / `op_api` kernel — so any of those releases can be targeted;
- msit's `onnx.yaml`: `domain::opset::OpType: <Ascend IR type>` for ATC.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from importlib import resources
from pathlib import Path

from ascend_common.errors import UserError, first_line

FORMAT = "ascend-deploy-kit/op-manifest"
FORMAT_VERSION = 1
CODEGEN_IN_WHEEL = "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml"
CODEGEN_SECTIONS = ("supported", "symint", "autograd", "quant")  # aten overloads with NPU kernels
PLUGIN_SECTIONS = ("official", "symint", "autograd", "quant")
KERNEL_KEYS = ("acl_op", "op_api")
ONNX_LINE = re.compile(r"^(?P<domain>[A-Za-z][\w.]*)::(?P<opset>\d+)::(?P<op>[A-Za-z]\w*):\s*(?P<ir>[A-Za-z]\w*)\s*$")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _yaml(data: bytes, where: str):
    import yaml

    try:
        return yaml.safe_load(data)
    except yaml.YAMLError as exc:
        raise UserError(f"{where}: not valid YAML ({first_line(exc)})") from None


def overload_name(entry, where: str) -> str:
    """`abs.out` from `abs.out(Tensor self, *, Tensor(a!) out) -> Tensor(a!)`, a bare name, or a dict."""
    text = entry.get("func") if isinstance(entry, dict) else entry
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"{where}: entry without a function schema: {entry!r}")
    return text.split("(", 1)[0].strip()


def read_codegen_source(source: Path | None) -> tuple[bytes, str]:
    """The codegen yaml's bytes and a description of where they came from."""
    if source is None:
        import importlib.util

        spec = importlib.util.find_spec("torch_npu")
        if spec is None or not spec.origin:
            raise UserError("torch_npu is not installed: pass the yaml file or a torch_npu wheel")
        source = Path(spec.origin).parent / "csrc" / "aten" / "npu_native_functions_by_codegen.yaml"
    source = Path(source)
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    if source.suffix == ".whl":
        try:
            with zipfile.ZipFile(source) as wheel:
                return wheel.read(CODEGEN_IN_WHEEL), f"{source.name}!{CODEGEN_IN_WHEEL}"
        except (zipfile.BadZipFile, KeyError) as exc:
            raise UserError(f"{source}: not a torch_npu wheel with {CODEGEN_IN_WHEEL} ({exc})") from None
    return source.read_bytes(), source.name


def build_from_codegen(source: Path | None, version: str) -> dict:
    data, origin = read_codegen_source(source)
    doc = _yaml(data, origin)
    if not isinstance(doc, dict) or doc.get("backend") != "NPU" or "supported" not in doc:
        raise UserError(f"{origin}: not torch_npu's npu_native_functions_by_codegen.yaml (no backend NPU / supported)")
    aten = sorted({overload_name(e, origin) for s in CODEGEN_SECTIONS for e in doc.get(s) or []})
    custom = sorted({overload_name(e, origin) for e in doc.get("custom") or []})
    return _torch_npu_manifest(version, aten, custom, [{"file": origin, "sha256": _sha256(data),
                                                       "what": "torch_npu codegen yaml (exact release)"}])


def _versions_in(spec, all_versions: list[str], where: str) -> set[str]:
    """op-plugin's version spec: `all_version`, `v2.2`, `v2.1, v2.3`, a range `[v2.1, newest]`
    (inclusive; `newest` = the last of `all_version`) or a longer list (an enumeration)."""
    if spec is None:
        return set()
    if isinstance(spec, str):
        spec = spec.strip()
        if spec == "all_version":
            return set(all_versions)
        items = [s.strip() for s in spec.split(",") if s.strip()]
        return {v for v in items if v in all_versions}
    if isinstance(spec, list):
        items = [str(s).strip() for s in spec]
        items = [all_versions[-1] if s == "newest" else s for s in items]
        unknown = [s for s in items if s not in all_versions]
        if unknown:
            raise UserError(f"{where}: unknown torch_npu version(s) {unknown}")
        if len(items) == 2:
            lo, hi = (all_versions.index(s) for s in items)
            return set(all_versions[lo:hi + 1])
        return set(items)
    raise UserError(f"{where}: unreadable version spec {spec!r}")


def plugin_version_key(version: str) -> str:
    """`2.14.0` → `v2.14` (op-plugin keys releases by major.minor)."""
    m = re.fullmatch(r"v?(\d+)\.(\d+)(?:\.\d+.*)?", version.strip())
    if not m:
        raise UserError(f"--torch-npu {version}: not a version (e.g. 2.14.0)")
    return f"v{m.group(1)}.{m.group(2)}"


def build_from_op_plugin(path: Path, version: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    doc = _yaml(data, str(path))
    if not isinstance(doc, dict) or not isinstance(doc.get("all_version"), list):
        raise UserError(f"{path}: not op-plugin's op_plugin_functions.yaml (no all_version list)")
    all_versions = [str(v) for v in doc["all_version"]]
    key = plugin_version_key(version)
    if key not in all_versions:
        raise UserError(f"--torch-npu {version}: op-plugin knows {', '.join(all_versions)}")

    def has_kernel(entry, where: str) -> bool:
        return any(key in _versions_in(entry.get(k), all_versions, where) for k in KERNEL_KEYS)

    aten, custom = set(), set()
    for section in (*PLUGIN_SECTIONS, "custom"):
        for entry in doc.get(section) or []:
            name = overload_name(entry, f"{path} [{section}]")
            if has_kernel(entry, f"{path}: {name}"):
                (custom if section == "custom" else aten).add(name)
    return _torch_npu_manifest(version, sorted(aten), sorted(custom), [{
        "file": path.name, "sha256": _sha256(data),
        "what": f"op-plugin op_plugin_functions.yaml, ops with an acl_op/op_api kernel in {key}"}])


def _torch_npu_manifest(version: str, aten: list[str], custom: list[str], sources: list[dict]) -> dict:
    from ascend_common import __version__

    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "torch_npu",
            "torch_npu": version, "generator": f"ascend-deploy-kit {__version__}: ascendkit manifest build",
            "provenance": sources, "counts": {"aten_overloads": len(aten), "npu_custom_ops": len(custom)},
            "aten": aten, "npu_custom": custom}


def build_onnx(path: Path) -> dict:
    from ascend_common import __version__

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    data = path.read_bytes()
    ops: dict[str, dict[str, dict[str, str]]] = {}
    malformed: list[str] = []
    for line in data.decode("utf-8").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = ONNX_LINE.match(line.strip())
        if m is None:
            malformed.append(line.strip())
            continue
        ops.setdefault(m["domain"], {}).setdefault(m["op"], {})[m["opset"]] = m["ir"]
    for domain in ops.values():
        for op, by_opset in domain.items():
            domain[op] = dict(sorted(by_opset.items(), key=lambda kv: int(kv[0])))
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": "atc_onnx",
            "generator": f"ascend-deploy-kit {__version__}: ascendkit manifest build",
            "provenance": [{"file": path.name, "sha256": _sha256(data),
                            "what": "msit onnx.yaml: ONNX operators CANN's ATC converts (IR type per opset; "
                                    "PartitionedCall = ATC decomposes it)"}],
            "counts": {"entries": sum(len(v) for d in ops.values() for v in d.values()),
                       "operators": sum(len(d) for d in ops.values()), "malformed_skipped": len(malformed)},
            "malformed_skipped": malformed,
            "ops": {d: dict(sorted(ops[d].items())) for d in sorted(ops)}}


def write_manifest(manifest: dict, out: Path) -> None:
    from ascend_common.atomic_write import write_json_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, manifest)


SHIPPED = {"2.14.0": "torch_npu-2.14.0.json", "2.1.0": "torch_npu-2.1.0.json", "onnx": "atc-onnx.json"}
DEFAULT_TORCH_NPU = "2.14.0"


def shipped_path(name: str) -> Path:
    return Path(str(resources.files("opcheck") / "manifests" / name))


def load_manifest(path: Path, kind: str) -> dict:
    """A manifest file, checked: the format, its version and kind, and the fields a checker reads."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such manifest") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid manifest (not JSON: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise UserError(f"{path}: invalid manifest (field 'format' is not {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION or data.get("kind") != kind:
        raise UserError(f"{path}: invalid manifest (expected kind {kind!r}, format_version {FORMAT_VERSION})")
    fields = ("aten", "npu_custom") if kind == "torch_npu" else ("ops",)
    for name in fields:
        if name not in data:
            raise UserError(f"{path}: invalid manifest (missing field {name!r})")
    return data
