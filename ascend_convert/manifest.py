"""`ascend_manifest.json`: what was converted, from what, how, and the sha256 of every byte written.

Deterministic (no timestamps, sorted keys) so that a resumed conversion and an uninterrupted one
write the same manifest, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ascend_common.errors import UserError

MANIFEST_NAME = "ascend_manifest.json"
MANIFEST_FORMAT = "ascend-deploy-kit/manifest"
MANIFEST_VERSION = 1
HASH_BLOCK = 1 << 23


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def file_record(path: Path) -> dict:
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def fsync_tree(root: Path) -> None:
    """Make every file under `root` (and the directory entries) durable before it is published."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_manifest(out_dir: Path) -> dict:
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        raise UserError(f"{path}: missing (not a directory written by ascendkit convert)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path}: not an ascend-deploy-kit manifest (field 'format' is not {MANIFEST_FORMAT!r})")
    if manifest.get("format_version") != MANIFEST_VERSION:
        raise UserError(f"{path}: manifest format_version {manifest.get('format_version')!r} is not supported "
                        f"(this version reads {MANIFEST_VERSION})")
    return manifest


def recorded_source(manifest: dict) -> Path | None:
    """The source checkpoint a manifest names, if it is still there (what verify and smoke compare with)."""
    source = manifest.get("source")
    path = source.get("path") if isinstance(source, dict) else None
    return Path(path) if isinstance(path, str) and Path(path).exists() else None
