"""The reference guide's dataset layout: `--data_root` with a caption file and a video list.

`prompt.txt` holds one caption per line; `videos.txt` holds, on the same line numbers, each clip's
path relative to `--data_root`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import UserError


@dataclass(frozen=True)
class RawSample:
    """A clip (or image) file and its caption, before any decoding."""

    path: Path
    caption: str
    source: str  # where the pairing came from, for reports: "videos.txt line 3"


def _read_lines(path: Path, flag: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{flag}: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{flag}: {path} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_reference_layout(
    data_root: Path, caption_column: str, video_column: str
) -> list[RawSample]:
    """Pairs of (clip, caption) from the reference layout; paths must stay inside data_root."""
    captions = _read_lines(data_root / caption_column, "--caption_column")
    videos = _read_lines(data_root / video_column, "--video_column")
    if len(captions) != len(videos):
        raise UserError(
            f"--caption_column: {caption_column} has {len(captions)} captions but {video_column} "
            f"lists {len(videos)} clips; they must match line for line"
        )
    root = data_root.resolve()
    samples = []
    for line, (caption, relative) in enumerate(zip(captions, videos, strict=True), start=1):
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise UserError(
                f"--video_column: line {line} of {video_column} points outside --data_root "
                f"({relative})"
            )
        samples.append(RawSample(path=path, caption=caption, source=f"{video_column} line {line}"))
    return samples
