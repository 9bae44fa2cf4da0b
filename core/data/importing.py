"""Bringing uploads into a dataset folder of the workspace, treating every name as hostile.

A folder upload keeps its sub-folders when the browser says where each file was (its relative
path); otherwise files keep only their own names. Every path component is reduced to a plain
name, stripped of anything that could address another folder, and made unique. A reference
layout whose list pointed into sub-folders that did not survive is repointed at the flattened
files. Zips go through the safe extractor of `core.data.archive`.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

from core.confine import Confinement
from core.data.archive import dataset_folder, extract_zip
from core.diskspace import FULL_ERRNOS, full_disk_sentence
from core.errors import UserError

_UNSAFE = re.compile(r"[\x00-\x1f/\\:]")


def safe_name(name: str) -> str:
    """A file name that can only mean a file in the target folder (spaces and unicode kept)."""
    base = re.split(r"[\\/]", name)[-1]
    base = _UNSAFE.sub("_", base).strip().lstrip(".")
    return base or "file"


def safe_dataset_name(name: str) -> str:
    cleaned = re.sub(r"[^\w\- .]", "_", name).strip(" .")[:80]
    return cleaned or time.strftime("dataset-%Y%m%d-%H%M%S")


def _unique(folder: Path, name: str) -> Path:
    target = folder / name
    stem, suffix, number = target.stem, target.suffix, 2
    while target.exists():
        target = folder / f"{stem} ({number}){suffix}"
        number += 1
    return target


def upload_paths(sources: list[Path], relative: list[str] | None) -> list[Path]:
    """Where each uploaded file goes in the dataset: its path inside the folder the user chose
    (its first component, the folder itself, dropped), or its name alone when the browser's
    paths are missing or do not match the files."""
    flat = [Path(safe_name(source.name)) for source in sources]
    if not relative or len(relative) != len(sources):
        return flat
    parts = [[p for p in re.split(r"[\\/]", path) if p not in ("", ".", "..")] for path in relative]
    if any(
        not p or not _same_name(p[-1], source.name)
        for p, source in zip(parts, sources, strict=True)
    ):
        return flat  # paths of another upload, or reordered: trust only the names
    if len({p[0] for p in parts}) == 1 and all(len(p) > 1 for p in parts):
        parts = [p[1:] for p in parts]
    return [Path(*(safe_name(component) for component in p)) for p in parts]


def _same_name(browser_name: str, stored_name: str) -> bool:
    """Whether the browser's name and the uploaded file's are one (the upload may have dropped
    characters such as `$` or `;` from the name it stored)."""
    return re.sub(r"[^\w.]", "", browser_name) == re.sub(r"[^\w.]", "", stored_name)


def import_files(
    sources: list[str | Path], destination: Path, relative: list[str] | None = None
) -> Path:
    """Copy uploaded files into a new dataset folder, keeping the sub-folders `relative` names
    (the browser's path of each file); a single zip is extracted instead.

    Everything is written beside the destination under hidden names and renamed into place
    when complete: a refused upload (a zip bomb, a full disk) leaves nothing behind.
    """
    sources = [Path(s) for s in sources if s]
    if not sources:
        raise UserError("nothing was uploaded: choose a folder, a zip or some clip files")
    if destination.exists():
        raise UserError(f"a dataset named {destination.name} already exists; pick another name")
    staging = destination.with_name(f".{destination.name}.partial")
    unzipped = destination.with_name(f".{destination.name}.unzipped")
    for leftover in (staging, unzipped):
        shutil.rmtree(leftover, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        if len(sources) == 1 and sources[0].suffix.lower() == ".zip":
            # Its contents are lifted to the dataset folder so captions can be edited in place.
            inner = dataset_folder(extract_zip(sources[0], unzipped))
            for child in list(inner.iterdir()):
                shutil.move(str(child), staging / child.name)
        else:
            for source, inside in zip(sources, upload_paths(sources, relative), strict=True):
                folder = (staging / inside).parent
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, _unique(folder, inside.name))
            _repoint_reference_lists(staging)
        staging.replace(destination)
    except OSError as error:
        if error.errno not in FULL_ERRNOS:
            raise
        raise UserError(
            full_disk_sentence(destination.parent, "free space and upload again")
        ) from None
    finally:
        for leftover in (staging, unzipped):
            shutil.rmtree(leftover, ignore_errors=True)
    return destination


def _repoint_reference_lists(folder: Path) -> None:
    """videos.txt entries like 'videos/a.mp4' become 'a.mp4' once the upload flattened them."""
    listing = folder / "videos.txt"
    if not listing.is_file():
        return
    lines = listing.read_text(encoding="utf-8", errors="replace").splitlines()
    repointed = []
    for line in lines:
        entry = line.strip()
        if entry and not (folder / entry).exists() and (folder / safe_name(entry)).exists():
            entry = safe_name(entry)
        repointed.append(entry)
    listing.write_text("\n".join(repointed) + "\n", encoding="utf-8")


def link_server_folder(path: str, confinement: Confinement) -> Path:
    """A folder already on the server, accepted only inside the folders the app may use."""
    if not path or not path.strip():
        raise UserError("name a folder on the server first")
    folder = confinement.path(path.strip(), "the folder")
    if not folder.is_dir():
        raise UserError(f"the folder {folder} does not exist on the server")
    return folder
