"""Editing captions in place, in whatever layout the dataset uses, with atomic writes.

A caption edit rewrites the file that holds it (name.txt, the reference's caption file, or the
metadata file) under a temporary name and renames it, so a crash mid-save never leaves a
half-written caption file. The Dataset tab's table edits (find and replace among them) are saved
through it. Torch-free: the web process calls this.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from core.data.dataset import relative_name
from core.data.discover import (
    CAPTION_COLUMNS,
    FILE_COLUMNS,
    METADATA_FILES,
    discover,
    pick_column,
)
from core.errors import UserError
from core.files import write_text_atomic


def read_captions(
    root: Path,
    layout: str = "auto",
    caption_column: str = "prompt.txt",
    video_column: str = "videos.txt",
) -> dict[str, str]:
    """{file relative to root: caption} for every paired file of the dataset."""
    found = discover(root, layout, caption_column, video_column)
    return {relative_name(s.path, root): s.caption.strip() for s in found.samples}


def write_captions(
    root: Path,
    changes: dict[str, str],
    layout: str = "auto",
    caption_column: str = "prompt.txt",
    video_column: str = "videos.txt",
) -> int:
    """Save new captions for the given files; returns how many changed."""
    found = discover(root, layout, caption_column, video_column)
    current = {relative_name(s.path, root): s for s in found.samples}
    unknown = [name for name in changes if name not in current]
    if unknown:
        raise UserError(f"{unknown[0]} is not a captioned file of this dataset")
    changed = {
        name: " ".join(text.split())
        for name, text in changes.items()
        if " ".join(text.split()) != current[name].caption.strip()
    }
    if not changed:
        return 0
    if found.layout == "pairs":
        for name, text in changed.items():
            write_text_atomic(current[name].path.with_suffix(".txt"), text + "\n")
    elif found.layout == "reference":
        _rewrite_reference(root, caption_column, video_column, changed)
    else:
        _rewrite_metadata(root, caption_column, video_column, changed)
    return len(changed)


def _rewrite_reference(
    root: Path, caption_column: str, video_column: str, changed: dict[str, str]
) -> None:
    captions_path, videos_path = root / caption_column, root / video_column
    captions = [
        line for line in captions_path.read_text(encoding="utf-8-sig").splitlines() if line.strip()
    ]
    videos = [
        line.strip()
        for line in videos_path.read_text(encoding="utf-8-sig").splitlines()
        if line.strip()
    ]
    for index, entry in enumerate(videos):
        name = relative_name((root / entry).resolve(), root)
        if name in changed:
            captions[index] = changed[name]
    write_text_atomic(captions_path, "\n".join(captions) + "\n")


def _rewrite_metadata(
    root: Path, caption_column: str, video_column: str, changed: dict[str, str]
) -> None:
    path = next(root / name for name in METADATA_FILES if (root / name).is_file())
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    else:
        rows = [
            json.loads(line)
            for line in path.read_text(encoding="utf-8-sig").splitlines()
            if line.strip()
        ]
    columns = list(rows[0].keys())
    file_column = pick_column(columns, video_column, FILE_COLUMNS, "file", path)
    text_column = pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", path)
    for row in rows:
        name = relative_name((root / str(row[file_column]).strip()).resolve(), root)
        if name in changed:
            row[text_column] = changed[name]
    if path.suffix == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buffer.getvalue())
    else:
        write_text_atomic(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
