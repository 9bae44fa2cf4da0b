"""Finding the (file, caption) pairs of a dataset folder, whatever layout it arrives in.

Layouts, tried in this order by `auto` (or named by `--dataset_layout`):
- `reference`: the guide's `--caption_column` file (one caption a line) and `--video_column` file
  (one path a line, relative to `--data_root`);
- `metadata`: `metadata.csv` or `metadata.jsonl` with a file column and a caption column;
- `pairs`: `name.mp4` (or any clip or image) beside `name.txt`, nested folders allowed.
Images (jpg, png, webp) count as one-frame samples in every layout. Image-to-video models start
each clip from an image: the clip's own first frame, unless the dataset names one (an
`--image_column` file, `images.txt`, beside `videos.txt`; an `image` column in the metadata; or,
in pairs, `name.png` beside `name.mp4`, which is then that clip's image and no sample of its own).
Paths that resolve outside the dataset folder (`..`, absolute paths, links) are refused: dataset
folders may come from uploads.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.data.video import IMAGE_SUFFIXES, is_image, is_media
from core.errors import UserError

LAYOUTS = ("auto", "reference", "metadata", "pairs")
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
FILE_COLUMNS = ("file_name", "filename", "file", "video", "path", "image", "media")
CAPTION_COLUMNS = ("caption", "text", "prompt", "description")
IMAGE_COLUMNS = ("image", "image_file", "first_frame")
_IGNORED_DIRS = {"__MACOSX", ".cache", ".git"}
# Records the preparation commands keep beside the clips (core/data/split.py): not media, not
# captions, and not worth a "skipped" line in the report.
_SIDECAR_FILES = {"split.json"}


@dataclass(frozen=True)
class RawSample:
    """A clip (or image) file and its caption, before any decoding."""

    path: Path
    caption: str
    source: str  # where the pairing came from, for reports: "videos.txt line 3"
    image: Path | None = None  # the image an image-to-video model starts from (None: frame 0)


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class Discovery:
    layout: str
    root: Path
    samples: list[RawSample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def discover(
    root: Path,
    layout: str = "auto",
    caption_column: str = "prompt.txt",
    video_column: str = "videos.txt",
    image_column: str = "images.txt",
) -> Discovery:
    """The dataset in `root` under the named layout (`auto` picks the first that applies)."""
    if layout == "auto":
        if (root / caption_column).is_file() and (root / video_column).is_file():
            layout = "reference"
        elif any((root / name).is_file() for name in METADATA_FILES):
            layout = "metadata"
        else:
            layout = "pairs"
    if layout == "reference":
        return _reference(root, caption_column, video_column, image_column)
    if layout == "metadata":
        return _metadata(root, caption_column, video_column, image_column)
    return _pairs(root, reserved={caption_column, video_column, image_column})


def _inside(root: Path, relative: str) -> Path | None:
    """`root / relative`, resolved, or None when it would leave root."""
    if not relative or Path(relative).is_absolute():
        return None
    path = (root / relative).resolve()
    return path if path.is_relative_to(root.resolve()) else None


def _column_file(root: Path, name: str, flag: str) -> Path:
    """The reference layout's list file, which may not lead out of the dataset (a link)."""
    path = _inside(root, name)
    if path is None:
        raise UserError(f"{flag}: {name} points outside the dataset folder {root}")
    return path


def _read_lines(path: Path, flag: str) -> list[str]:
    if not path.is_file():
        raise UserError(f"{flag}: {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{flag}: {path} is not UTF-8 text") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _reference(root: Path, caption_column: str, video_column: str, image_column: str) -> Discovery:
    captions = _read_lines(
        _column_file(root, caption_column, "--caption_column"), "--caption_column"
    )
    videos = _read_lines(_column_file(root, video_column, "--video_column"), "--video_column")
    if len(captions) != len(videos):
        raise UserError(
            f"--caption_column: {caption_column} has {len(captions)} captions but {video_column} "
            f"lists {len(videos)} clips; they must match line for line"
        )
    images: list[str | None] = [None] * len(videos)
    if (root / image_column).is_file():  # optional: without it, every clip's first frame
        images = list(
            _read_lines(_column_file(root, image_column, "--image_column"), "--image_column")
        )
        if len(images) != len(videos):
            counted = f"{len(images)} image{'s' if len(images) != 1 else ''}"
            raise UserError(
                f"--image_column: {image_column} lists {counted} but {video_column} "
                f"lists {len(videos)} clips; they must match line for line"
            )
    found = Discovery("reference", root)
    rows = zip(captions, videos, images, strict=True)
    for line, (caption, relative, image) in enumerate(rows, start=1):
        path = _inside(root, relative)
        if path is None:
            found.skipped.append(
                Skipped(
                    root / relative, f"{video_column} line {line} points outside the dataset folder"
                )
            )
            continue
        image_path = _inside(root, image) if image else None
        if image and image_path is None:
            found.skipped.append(
                Skipped(path, f"{image_column} line {line} points outside the dataset folder")
            )
            continue
        found.samples.append(RawSample(path, caption, f"{video_column} line {line}", image_path))
    return found


def _metadata_rows(path: Path) -> list[dict]:
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8-sig") as handle:
                return list(csv.DictReader(handle))
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"line {number} is not a JSON object")
                rows.append(row)
        return rows
    except (UnicodeDecodeError, ValueError, csv.Error) as error:
        raise UserError(f"--data_root: {path.name} cannot be read ({error})") from None


def pick_column(
    columns: list[str], preferred: str, known: tuple[str, ...], what: str, path: Path
) -> str:
    if preferred in columns:
        return preferred
    for name in known:
        if name in columns:
            return name
    raise UserError(
        f"--data_root: {path.name} has no {what} column (columns: {', '.join(columns) or 'none'}"
        f"; expected one of {', '.join(known)})"
    )


def _metadata(root: Path, caption_column: str, video_column: str, image_column: str) -> Discovery:
    path = next((root / name for name in METADATA_FILES if (root / name).is_file()), None)
    if path is None:
        raise UserError(f"--dataset_layout metadata: {root} has no metadata.csv or metadata.jsonl")
    rows = _metadata_rows(path)
    found = Discovery("metadata", root)
    if not rows:
        return found
    columns = list(rows[0].keys())
    file_column = pick_column(columns, video_column, FILE_COLUMNS, "file", path)
    text_column = pick_column(columns, caption_column, CAPTION_COLUMNS, "caption", path)
    image_columns = [c for c in (image_column, *IMAGE_COLUMNS) if c in columns and c != file_column]
    image_key = image_columns[0] if image_columns else None
    for number, row in enumerate(rows, start=1):
        relative = str(row.get(file_column) or "").strip()
        media = _inside(root, relative)
        if media is None:
            found.skipped.append(
                Skipped(
                    root / relative, f"{path.name} row {number} points outside the dataset folder"
                )
            )
            continue
        image = str(row.get(image_key) or "").strip() if image_key else ""
        image_path = _inside(root, image) if image else None
        if image and image_path is None:
            found.skipped.append(
                Skipped(media, f"the image of {path.name} row {number} is outside the folder")
            )
            continue
        caption = str(row.get(text_column) or "")
        found.samples.append(RawSample(media, caption, f"{path.name} row {number}", image_path))
    return found


def _dataset_files(root: Path):
    """Every file of a pairs-layout folder, in order: hidden and tool folders left out."""
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if any(part.startswith(".") or part in _IGNORED_DIRS for part in relative.parts):
            continue
        if path.is_dir() or str(relative) in _SIDECAR_FILES:
            continue
        yield path, relative


def media_files(root: Path) -> list[Path]:
    """The clips and images of a pairs-layout folder, captioned or not (links inside it only)."""
    resolved_root = root.resolve()
    return [
        path
        for path, _ in _dataset_files(root)
        if is_media(path) and path.resolve().is_relative_to(resolved_root)
    ]


def _pairs(root: Path, reserved: set[str]) -> Discovery:
    found = Discovery("pairs", root)
    resolved_root = root.resolve()
    for path, relative in _dataset_files(root):
        if path.is_symlink() and not path.resolve().is_relative_to(resolved_root):
            found.skipped.append(Skipped(path, "a link that points outside the dataset folder"))
            continue
        suffix = path.suffix.lower()
        if suffix == ".txt":
            if str(relative) in reserved:
                continue
            if not any(
                sibling.is_file() and is_media(sibling)
                for sibling in path.parent.glob(f"{_glob_escape(path.stem)}.*")
            ):
                found.skipped.append(Skipped(path, "a caption file without a clip beside it"))
            continue
        if not is_media(path):
            found.skipped.append(Skipped(path, f"unsupported type ({suffix or 'no extension'})"))
            continue
        if is_image(path) and _clip_beside(path) is not None:
            continue  # the clip's image, not a sample of its own
        caption_file = path.with_suffix(".txt")
        if not caption_file.is_file():
            found.skipped.append(
                Skipped(path, f"no caption (expected {caption_file.name} beside it)")
            )
            continue
        try:
            caption = caption_file.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            found.skipped.append(Skipped(path, f"{caption_file.name} is not UTF-8 text"))
            continue
        image = None if is_image(path) else _image_beside(path, resolved_root)
        found.samples.append(RawSample(path.resolve(), caption, str(relative), image))
    return found


def _image_beside(clip: Path, root: Path) -> Path | None:
    """name.png (or .jpg, .jpeg, .webp) beside name.mp4: the clip's image, if there is one
    (a link that leads outside the dataset folder is not)."""
    for sibling in sorted(clip.parent.glob(f"{_glob_escape(clip.stem)}.*")):
        if sibling.suffix.lower() in IMAGE_SUFFIXES and sibling.is_file():
            resolved = sibling.resolve()
            return resolved if resolved.is_relative_to(root) else None
    return None


def _clip_beside(image: Path) -> Path | None:
    """name.mp4 (any clip) beside name.png: the clip this image belongs to, if there is one."""
    for sibling in sorted(image.parent.glob(f"{_glob_escape(image.stem)}.*")):
        if is_media(sibling) and not is_image(sibling) and sibling.is_file():
            return sibling
    return None


def _glob_escape(text: str) -> str:
    return "".join(f"[{char}]" if char in "*?[" else char for char in text)
