"""Every name `convert` writes, `verify` checks and the runtime looks for, in one place: the
weight files of each layout, their index and description files, the manifest, the journal and the
side files, and the temporary directories around the output. A name spelled twice can drift; these
are imported everywhere instead (no torch here: the CLI checks options before importing it)."""

from __future__ import annotations

import re
from pathlib import Path

#: What `verify` reads first: the sha256 of every byte written (manifest.py builds its contents).
MANIFEST_NAME = "ascend_manifest.json"
#: Inside the partial directory only: what a `--resume` keeps (finished files, calibration).
JOURNAL_NAME = ".ascendkit-journal.json"
CONFIG_NAME = "config.json"

#: The default layout: Hugging Face's own shard and index names.
HF_INDEX_NAME = "model.safetensors.index.json"
#: The quantized layout, msModelSlim v1 as vllm-ascend reads it (quant_layout.py).
QUANT_INDEX_NAME = "quant_model_weights.safetensors.index.json"
QUANT_DESCRIPTION_NAME = "quant_model_description.json"
#: W8A8 SmoothQuant scales. JSON, not safetensors: a `*.safetensors` beside the weights would be
#: read as weights by every loader that globs for them (smoothing.py).
SMOOTHING_NAME = "ascend_smoothing.json"

#: The packed layout: `tp{N}/rank{r}.safetensors`.
RANK_FILE_GLOB = "tp*/rank*.safetensors"
#: Where weight files of any layout can be (what `verify` requires the manifest to list).
WEIGHT_FILE_GLOBS = ("*.safetensors", "tp*/*.safetensors")
_RANK_FILE = re.compile(r"tp(\d+)/rank(\d+)\.safetensors")


def _numbered(stem: str, count: int) -> list[str]:
    if count == 1:
        return [f"{stem}.safetensors"]
    return [f"{stem}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def shard_names(count: int) -> list[str]:
    """`model.safetensors`, or `model-0000i-of-0000n.safetensors` past one shard."""
    return _numbered("model", count)


def quant_shard_names(count: int) -> list[str]:
    """`quant_model_weights.safetensors`, or numbered like Hugging Face's past one shard."""
    return _numbered("quant_model_weights", count)


def packed_dir(size: int) -> str:
    """The directory holding the rank files of a `--tp size` packed layout."""
    return f"tp{size}"


def rank_file(size: int, rank: int) -> str:
    """Rank `rank` of `size`, relative to the output directory."""
    return f"{packed_dir(size)}/rank{rank}.safetensors"


def parse_rank_file(relative: str) -> tuple[int, int] | None:
    """`(size, rank)` of a rank file's path relative to the output directory, else None."""
    m = _RANK_FILE.fullmatch(relative)
    return (int(m.group(1)), int(m.group(2))) if m else None


def partial_dir(out: Path) -> Path:
    """Where a conversion to `out` writes until it is complete: a hidden sibling, renamed at the end."""
    return out.parent / f".{out.name}.partial"


def replaced_dir(out: Path, pid: int) -> Path:
    """Where an existing `out` (only with --force) is moved aside while the new one takes its name."""
    return out.parent / f".{out.name}.old-{pid}"
