"""Writing files that must never be seen half-written (DESIGN.md: spec.json, captions, configs)."""

from __future__ import annotations

from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a hidden temporary name beside `path`, then rename it into place."""
    temporary = path.with_name(f".{path.name}.partial")
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(path)
