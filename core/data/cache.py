"""The precompute cache: encoded clips and captions kept as safetensors between runs.

An entry's key is a hash of everything that decides its content: for a clip, the file's content
digest, the bucket, the frames taken and the VAE's identity and dtype; for a caption, its exact
text and the text encoder's identity and dtype. A second run on the same data and model reads
every entry and loads no encoder; editing one caption re-encodes that caption alone.

Entries are written under a temporary name and renamed, and carry a checksum of their tensors:
a corrupt or partly written entry fails verification, is deleted and is encoded again, never
trained on.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

FORMAT_VERSION = "1"


def cache_key(kind: str, **parts: Any) -> str:
    payload = json.dumps({"kind": kind, "version": FORMAT_VERSION, **parts}, sort_keys=True)
    return hashlib.blake2b(payload.encode(), digest_size=20).hexdigest()


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(tensors):
        tensor = tensors[name].contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def component_identity(folder: str | Path) -> str:
    """A model component's identity: its config and its weight files' names, sizes and times.

    `folder` is the component's resolved local folder (a Hub download's snapshot folder holds
    the commit hash in its path, so two revisions never share entries).
    """
    folder = Path(folder)
    parts: list[Any] = [str(folder.resolve())]
    config = folder / "config.json"
    if config.is_file():
        parts.append(hashlib.blake2b(config.read_bytes(), digest_size=16).hexdigest())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        stat = weights.stat()
        parts.append([weights.name, stat.st_size, stat.st_mtime_ns])
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


class PrecomputeCache:
    """A folder of verified safetensors entries, two levels deep by key prefix."""

    def __init__(self, root: str | Path):
        self.root = Path(root) / "precomputed"
        self.hits = 0
        self.misses = 0
        self.repaired = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        path = self._path(key)
        if not path.is_file():
            self.misses += 1
            return None
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                expected = (handle.metadata() or {}).get("checksum")
            tensors = load_file(str(path))
            if expected is None or _checksum(tensors) != expected:
                raise ValueError("checksum mismatch")
        except (SafetensorError, OSError, ValueError, RuntimeError):
            # Corrupt or truncated: never train on it; drop it so it is encoded again.
            path.unlink(missing_ok=True)
            self.repaired += 1
            self.misses += 1
            return None
        self.hits += 1
        return tensors

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}
        temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
        save_file(tensors, str(temporary), metadata={"checksum": _checksum(tensors)})
        temporary.replace(path)
