"""What `check_ops --model` can name, and how each becomes exported programs to check:
an HF or converted directory (config.json only), an `.onnx` file, an exported program (`.pt2`), or
`module:function` returning `(model, example_args)` or `(model, example_args, example_kwargs)`."""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ascend_common.errors import UserError, first_line

HF, ONNX, PT2, FUNCTION = "hf", "onnx", "pt2", "function"
_FUNCTION = re.compile(r"^(?P<module>[A-Za-z_][\w.]*):(?P<function>[A-Za-z_]\w*)$")


@dataclass(frozen=True)
class ModelInput:
    kind: str  # hf | onnx | pt2 | function
    value: str
    path: Path | None = None


def resolve(value: str) -> ModelInput:
    path = Path(value)
    if path.is_dir():
        return ModelInput(HF, value, path)
    if path.is_file():
        kind = {".onnx": ONNX, ".pt2": PT2}.get(path.suffix.lower())
        if kind is None:
            raise UserError(f"{value}: not a model check_ops reads (a directory with config.json, a .onnx, "
                            f"a .pt2, or module:function)")
        return ModelInput(kind, value, path)
    if _FUNCTION.match(value) and not path.suffix:
        return ModelInput(FUNCTION, value)
    raise UserError(f"{value}: no such file or directory")


def _pickled_payloads(reader, model: str) -> list[str]:
    """Entries of the archive that only pickle can read: legacy weight/constant files, tensors saved
    with torch.save, custom and opaque objects."""
    import json

    from torch.export.pt2_archive import constants as C

    names = set(reader.get_file_names())
    found = [n for n in (f"{C.WEIGHTS_DIR}{model}.pt", f"{C.CONSTANTS_DIR}{model}.pt") if n in names]
    for config_format in (C.WEIGHTS_CONFIG_FILENAME_FORMAT, C.CONSTANTS_CONFIG_FILENAME_FORMAT):
        config_file = config_format.format(model)
        if config_file not in names:
            continue
        for fqn, meta in json.loads(reader.read_string(config_file)).get("config", {}).items():
            path = meta.get("path_name", "")
            if meta.get("use_pickle") or path.startswith((C.CUSTOM_OBJ_FILENAME_PREFIX, C.OPAQUE_OBJ_FILENAME_PREFIX)):
                found.append(fqn)
    return found


def load_pt2(path: Path, trust_pickle: bool = False) -> torch.export.ExportedProgram:
    """An exported program from `torch.export.save`, read without unpickling anything.

    `torch.export.load` unpickles pickled weights and constants (weights_only=False) and retries
    the example inputs with weights_only=False too. This reads the graph and raw tensor payloads the
    same way but refuses any pickled entry unless `trust_pickle`, and never reads the example inputs
    (check_ops needs the graph, not them)."""
    try:
        from torch._export.serde import schema
        from torch._export.serde.serialize import (
            ExportedProgramDeserializer,
            _bytes_to_dataclass,
        )
        from torch.export.pt2_archive import constants as C
        from torch.export.pt2_archive._package import (
            PT2ArchiveReader,
            _load_constants,
            _load_state_dict,
        )
    except ImportError:  # an older torch without the PT2 archive format
        raise UserError(f"{path}: this torch ({torch.__version__}) cannot read a .pt2 archive") from None
    try:
        with PT2ArchiveReader(str(path)) as reader:
            models = sorted(n[len(C.MODELS_DIR):-len(".json")] for n in reader.get_file_names()
                            if n.startswith(C.MODELS_DIR) and n.endswith(".json"))
            if not models:
                raise UserError(f"{path}: no exported program in this archive (expected {C.MODELS_DIR}<name>.json)")
            model = "model" if "model" in models else models[0]
            pickled = _pickled_payloads(reader, model)
            if pickled and not trust_pickle:
                raise UserError(f"{path}: {len(pickled)} entries can only be read by unpickling "
                                f"({', '.join(pickled[:3])}); pass --trust-remote-code if you trust this file")
            program = _bytes_to_dataclass(schema.ExportedProgram,
                                          reader.read_bytes(C.MODELS_FILENAME_FORMAT.format(model)))
            return ExportedProgramDeserializer().deserialize(
                program, _load_state_dict(reader, model), _load_constants(reader, model), b"")
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - zip, JSON and schema errors all mean a bad archive
        raise UserError(f"{path}: not a readable exported program ({type(exc).__name__}: {first_line(exc)})") from None


def _call_factory(spec: str):
    match = _FUNCTION.match(spec)
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # as `python -m` does: the user's own modules
    try:
        module = importlib.import_module(match["module"])
    except Exception as exc:  # noqa: BLE001 - the user's module failed to import
        raise UserError(f"{spec}: cannot import {match['module']} ({type(exc).__name__}: {first_line(exc)})") from None
    factory = getattr(module, match["function"], None)
    if not callable(factory):
        raise UserError(f"{spec}: {match['module']} has no function {match['function']}")
    try:
        return factory()
    except Exception as exc:  # noqa: BLE001 - the user's factory failed
        raise UserError(f"{spec}: {match['function']}() failed ({type(exc).__name__}: {first_line(exc)})") from None


def export_function(spec: str) -> torch.export.ExportedProgram:
    """Call `module:function` (the user names their own code: it runs) and export what it returns."""
    from .export import export

    result = _call_factory(spec)
    if not (isinstance(result, tuple) and len(result) in (2, 3) and isinstance(result[0], torch.nn.Module)
            and isinstance(result[1], tuple) and (len(result) == 2 or isinstance(result[2], dict))):
        raise UserError(f"{spec}: expected it to return (model, example_args) or (model, example_args, "
                        f"example_kwargs) with a torch.nn.Module and a tuple, got {type(result).__name__}")
    model, args, kwargs = (*result, {})[:3]
    return export(model.eval(), args, kwargs, f"{spec} ({type(model).__name__})")
