"""What a split keeps on disk and what it names: the options, `OUT/split.json` (each source's
scenes, clips and the parts left out, with reasons), each family's native clip, clip names.

Pure data and names, shared by the split command (core/data/split.py) and what reads its record.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

from pydantic import BaseModel, Field

from core.errors import UserError
from core.files import write_text_atomic

SPLIT_FILE = "split.json"

# Each family's native clip: the length and frame rate its released checkpoints generate.
FAMILIES = {
    "2b": {"frame_step": 4, "frames": 49, "fps": 8.0},
    "5b": {"frame_step": 4, "frames": 49, "fps": 8.0},
    "1.5": {"frame_step": 8, "frames": 81, "fps": 16.0},
}


# ---- settings and the record ------------------------------------------------------------------


class SplitOptions(BaseModel):
    """What shapes the clips; a source split once with these is not split again with them."""

    frame_step: int = 4
    max_frames: int = 49  # the family's native length: clips take the largest count up to this
    frames: int | None = None  # an exact frame count instead
    fps: float = 8.0
    size: tuple[int, int] | None = None  # (height, width)
    crop: str = "center"
    min_seconds: float = 1.0
    max_clips_per_scene: int | None = None  # None: as many as the scene holds


class ClipRecord(BaseModel):
    file: str
    start: float  # seconds in the source
    end: float
    frames: int
    scene: int
    written: bool = False


class DroppedPart(BaseModel):
    start: float
    end: float
    reason: str


class SourceRecord(BaseModel):
    source: str
    size: int  # bytes and modification time: a changed source is split again
    mtime: float
    prefix: str  # the clips' names begin with it
    options: SplitOptions
    fps: float = 0.0
    duration: float = 0.0
    scenes: list[tuple[float, float]] = []
    clips: list[ClipRecord] = []
    dropped: list[DroppedPart] = []
    complete: bool = False


class SplitRecord(BaseModel):
    sources: list[SourceRecord] = Field(default_factory=list)


def read_record(out: Path) -> SplitRecord:
    path = out / SPLIT_FILE
    if not path.is_file():
        return SplitRecord()
    try:
        return SplitRecord.model_validate_json(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(
            f"{path} is damaged; delete it (the clips beside it stay) to split again"
        ) from None


def write_record(out: Path, record: SplitRecord) -> None:
    write_text_atomic(out / SPLIT_FILE, record.model_dump_json(indent=2))


def family_options(family: str) -> tuple[int, int, float]:
    """(frame step, native frames, native fps) of `2b`, `5b`, `1.5`, or a model folder or id."""
    if family in FAMILIES:
        native = FAMILIES[family]
        return native["frame_step"], native["frames"], native["fps"]
    from core.models.registry import identify
    from core.models.source import ModelSource, check_source

    source = ModelSource(family)
    try:
        check_source(source)
        rules = identify(source).rules  # the model family layer's rules, from its configs
    except UserError as error:
        raise UserError(f"--family: {str(error).split(': ', 1)[-1]}") from None
    native = FAMILIES["1.5" if rules.patch_size_t else "5b"]
    return rules.frame_step, native["frames"], native["fps"]


# ---- names ------------------------------------------------------------------------------------


def safe_stem(name: str) -> str:
    """A file-name stem kept readable: unicode letters and digits stay, separators go."""
    name = unicodedata.normalize("NFC", name)
    name = re.sub(r"[\x00-\x1f\x7f/\\:*?\"<>|]+", "_", name).strip(" ._")
    return name[:80] or "video"


def time_stamp(seconds: float) -> str:
    """`0m12.500s`-style, the same width for every clip of a source under an hour."""
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{rest:06.3f}s"


def clip_name(prefix: str, start: float, end: float) -> str:
    return f"{prefix} {time_stamp(start)}-{time_stamp(end)}.mp4"


def unique_prefix(stem: str, taken: set[str]) -> str:
    prefix, number = stem, 2
    while prefix in taken:
        prefix, number = f"{stem} ({number})", number + 1
    return prefix
