"""Open any supported checkpoint: a safetensors directory, `pytorch_model*.bin`, or a `.gguf` file."""

from __future__ import annotations

from pathlib import Path

from ascend_common.errors import UserError

from ..arch import ArchSpec, find_spec
from ..layout_names import CONFIG_NAME, HF_INDEX_NAME
from .base import CheckpointReader, StoredPart, TensorInfo, read_config

__all__ = ["CheckpointReader", "StoredPart", "TensorInfo", "open_checkpoint", "read_config"]


def open_checkpoint(src: Path, extra_specs: list[ArchSpec] | None = None) -> CheckpointReader:
    """The reader for `src`, its `spec` set (`extra_specs` first, then the built-in ones): a GGUF's
    from the file's metadata, a directory's from its config.json, where an unsupported architecture
    is an error naming that file."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"{src}: no such file or directory")
    if src.is_file():
        if src.suffix == ".gguf":
            from .gguf_file import GGUFReader

            return GGUFReader(src, extra_specs)
        raise UserError(f"{src}: not a checkpoint (give a directory, or a .gguf file)")
    ggufs = sorted(src.glob("*.gguf"))
    safetensors = sorted(src.glob("*.safetensors"))
    bins = sorted(src.glob("pytorch_model*.bin"))
    reader: CheckpointReader
    if safetensors or (src / HF_INDEX_NAME).is_file():
        from .safetensors_dir import SafetensorsReader

        reader = SafetensorsReader(src, safetensors)
    elif bins or (src / "pytorch_model.bin.index.json").is_file():
        from .torch_bin import TorchBinReader

        reader = TorchBinReader(src, bins)
    elif len(ggufs) == 1:
        from .gguf_file import GGUFReader

        return GGUFReader(ggufs[0], extra_specs)
    elif len(ggufs) > 1:
        raise UserError(f"{src}: holds {len(ggufs)} .gguf files ({', '.join(p.name for p in ggufs)}); name one")
    else:
        raise UserError(f"{src}: no weights found (expected *.safetensors, pytorch_model*.bin or a .gguf file)")
    reader.spec = find_spec(reader.config(), extra_specs, where=str(src / CONFIG_NAME))
    return reader
