"""Safe extraction of dataset zips, which may come from anyone.

Every entry is checked before a byte is written: no absolute paths, no `..` escapes, no links,
no more than MAX_FILES entries, and no more than MAX_BYTES in total, counted while decompressing
(a zip's declared sizes can lie). The archive is extracted into a hidden staging folder that is
renamed into place only when complete, so a refused or broken zip leaves nothing behind. Names
keep their spaces and non-ASCII characters.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from core.errors import UserError

MAX_FILES = 100_000
MAX_BYTES = 200 * 1024**3
_CHUNK = 1 << 20


class UnsafeArchive(UserError):
    """A zip that tries to write outside its folder, holds links, or is too big."""


def _safe_relative(name: str) -> PurePosixPath:
    normalized = name.replace("\\", "/")
    path = PurePosixPath(normalized)
    if normalized.startswith("/") or (len(normalized) > 1 and normalized[1] == ":"):
        raise UnsafeArchive(f"the zip entry {name!r} has an absolute path; refused")
    if any(part == ".." for part in path.parts):
        raise UnsafeArchive(f"the zip entry {name!r} points outside the archive; refused")
    return path


def _is_link(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_archive(archive: zipfile.ZipFile, max_files: int = MAX_FILES) -> list[zipfile.ZipInfo]:
    """The entries to extract, after refusing anything unsafe."""
    entries = archive.infolist()
    if len(entries) > max_files:
        raise UnsafeArchive(
            f"the zip holds {len(entries)} entries, more than the limit of {max_files}"
        )
    for info in entries:
        _safe_relative(info.filename)
        if _is_link(info):
            raise UnsafeArchive(f"the zip entry {info.filename!r} is a link; refused")
    return entries


def extract_zip(
    zip_path: str | Path,
    destination: str | Path,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
) -> Path:
    """Extract `zip_path` into `destination` (which must not exist yet) and return it."""
    zip_path, destination = Path(zip_path), Path(destination)
    staging = destination.with_name(f".{destination.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            entries = check_archive(archive, max_files)
            staging.mkdir(parents=True)
            written = 0
            for info in entries:
                target = staging.joinpath(*_safe_relative(info.filename).parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as sink:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchive(
                                f"the zip unpacks to more than "
                                f"{max_bytes / 1024**3:.0f} GB; refused"
                            )
                        sink.write(chunk)
    except zipfile.BadZipFile as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"--data_root: {zip_path.name} is not a readable zip ({error})") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.replace(destination)
    return destination


def dataset_folder(extracted: Path) -> Path:
    """The folder holding the data: a zip of one top folder holds its data one level down."""
    children = [
        c for c in extracted.iterdir() if not c.name.startswith(".") and c.name != "__MACOSX"
    ]
    if len(children) == 1 and children[0].is_dir():
        return children[0]
    return extracted


def open_dataset_zip(zip_path: Path, cache_dir: Path) -> Path:
    """Extract a dataset zip once into the cache (keyed by its content) and return its folder."""
    digest = hashlib.blake2b(digest_size=16)
    with open(zip_path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    destination = cache_dir / "extracted" / digest.hexdigest()
    if not destination.is_dir():
        destination.parent.mkdir(parents=True, exist_ok=True)
        extract_zip(zip_path, destination)
    return dataset_folder(destination)
