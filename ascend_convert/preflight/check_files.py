"""File rules beyond the weights (those are read in checkpoint.py): a tokenizer and a chat template
where the engine looks for them, and, where ascendkit's manifest is present, files that are still
the ones it recorded (sizes; sha256 with --hash)."""

from __future__ import annotations

import json

from ..layout_names import MANIFEST_NAME
from .checkpoint import Checkpoint, inside
from .findings import Collector
from .names import listing

TOKENIZER_FILES = (("tokenizer.json",), ("tokenizer.model",), ("vocab.json", "merges.txt"), ("tiktoken.model",))
TEMPLATE_FILES = ("chat_template.jinja", "chat_template.json")


def check_files(ckpt: Checkpoint, out: Collector, rehash: bool = False) -> None:
    root = ckpt.root
    if not any(all((root / f).is_file() for f in files) for files in TOKENIZER_FILES):
        out.add("files.tokenizer", str(root), "no tokenizer.json, tokenizer.model or vocab.json + merges.txt")
    elif not (any((root / f).is_file() for f in TEMPLATE_FILES) or _config_template(root)):
        out.add("files.chat_template", "tokenizer_config.json chat_template",
                "no chat template (tokenizer_config.json, chat_template.jinja): chat requests fail")
    if (root / MANIFEST_NAME).is_file():
        _manifest(ckpt, out, rehash)


def _config_template(root) -> bool:
    try:
        return bool(json.loads((root / "tokenizer_config.json").read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, ValueError, AttributeError):
        return False


def _manifest(ckpt: Checkpoint, out: Collector, rehash: bool) -> None:
    try:
        files = json.loads((ckpt.root / MANIFEST_NAME).read_text(encoding="utf-8"))["files"]
        if not isinstance(files, dict):
            raise TypeError("files is not an object")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        out.add("files.manifest", MANIFEST_NAME, f"not a readable manifest ({exc})")
        return
    missing, changed = [], []
    for rel, record in sorted(files.items()):
        path = ckpt.root / rel
        if not inside(ckpt.root, rel) or not path.is_file():
            missing.append(rel)
        elif path.stat().st_size != record.get("size"):
            changed.append(f"{rel} ({path.stat().st_size} bytes, recorded {record.get('size')})")
        elif rehash:
            from ..manifest import sha256_file

            if sha256_file(path) != record.get("sha256"):
                changed.append(f"{rel} (sha256 differs)")
    unlisted = [w for w in ckpt.weight_files if w not in files]
    if missing:
        out.add("files.manifest", missing[0], f"{len(missing)} file(s) the manifest records are missing "
                                              f"({listing(missing)})")
    if changed:
        out.add("files.manifest", changed[0].split(" ")[0], f"{len(changed)} file(s) differ from the manifest "
                                                             f"({listing(changed)})")
    if unlisted:
        out.add("files.manifest", unlisted[0], f"{len(unlisted)} weight file(s) the manifest does not record "
                                               f"({listing(unlisted)})")
