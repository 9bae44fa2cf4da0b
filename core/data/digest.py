"""Content digests of dataset files: the precompute cache's key and the duplicate finder.

Hashing a large dataset on every run would cost more than it saves, so digests are remembered
in a small JSON memo beside the cache, keyed by path, size and modification time: a file that
changes gets a new digest, one that doesn't is never read again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20
MEMO_FILE = "digests.json"


def file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=20)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DigestMemo:
    """Digests of files, recomputed only when a file's size or mtime changed."""

    def __init__(self, folder: Path | None):
        self.path = folder / MEMO_FILE if folder else None
        self.entries: dict[str, list] = {}
        self.dirty = False
        if self.path and self.path.is_file():
            try:
                self.entries = json.loads(self.path.read_text())
            except (OSError, ValueError):
                self.entries = {}  # a damaged memo only costs re-hashing

    def digest(self, path: Path) -> str:
        info = path.stat()
        key = str(path)
        stamp = [info.st_size, info.st_mtime_ns]
        entry = self.entries.get(key)
        if entry and entry[:2] == stamp:
            return entry[2]
        value = file_digest(path)
        self.entries[key] = [*stamp, value]
        self.dirty = True
        return value

    def save(self) -> None:
        if not (self.path and self.dirty):
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{MEMO_FILE}.{os.getpid()}.partial")
        temporary.write_text(json.dumps(self.entries))
        temporary.replace(self.path)
        self.dirty = False
