"""Safe extraction of dataset zips, which may come from anyone.

Every entry is checked before a byte is written: no absolute paths, no `..` escapes, no links,
no more than MAX_FILES entries. While decompressing (a zip's declared sizes can lie) the bytes
are counted against three limits: MAX_BYTES in all; MAX_RATIO times an entry's compressed size
(a zip bomb: a few MB of zeros that unpack to GBs), past the first RATIO_GRACE bytes of an entry;
and the free space of the disk, which keeps a reserve (5% of the disk, at most 1 GB) so an
upload never fills it. The archive is extracted into a hidden staging folder that is renamed
into place only when complete, so a refused or broken zip leaves nothing behind. Names keep
their spaces and non-ASCII characters.
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from core.diskspace import FULL_ERRNOS, free_bytes, full_disk_sentence
from core.errors import UserError

MAX_FILES = 100_000
MAX_BYTES = 200 * 1024**3
# Video and image files barely compress, captions and metadata about 3 to 10 times; a zip
# bomb's zeros about 1000 times. Past this ratio an entry is refused as a bomb.
MAX_RATIO = 100
RATIO_GRACE = 1 << 20  # small entries (an empty caption list) may compress better
_CHUNK = 1 << 20


def keep_free(path: str | Path) -> int:
    """The bytes an extraction leaves free on the disk holding `path`: 5%, at most 1 GB."""
    return min(1024**3, shutil.disk_usage(path).total // 20)


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
            _Extraction(zip_path, staging, max_bytes).run(archive, entries)
    except zipfile.BadZipFile as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"--data_root: {zip_path.name} is not a readable zip ({error})") from None
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        if error.errno in FULL_ERRNOS:
            raise UnsafeArchive(
                full_disk_sentence(destination.parent, "free space and try again")
            ) from None
        raise
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    staging.replace(destination)
    return destination


class _Extraction:
    """Writes a checked archive's entries, counting every byte against the limits."""

    def __init__(self, zip_path: Path, staging: Path, max_bytes: int):
        self.zip_name = zip_path.name
        self.zip_size = zip_path.stat().st_size
        self.staging = staging
        self.max_bytes = max_bytes
        self.keep_free = keep_free(staging)
        self.written = 0

    def run(self, archive: zipfile.ZipFile, entries: list[zipfile.ZipInfo]) -> None:
        declared = sum(info.file_size for info in entries)
        self._check_space(declared)  # the sizes the zip declares, before writing anything
        for info in entries:
            target = self.staging.joinpath(*_safe_relative(info.filename).parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            # A lying header cannot make an entry look bigger than the file that holds it.
            allowed = max(RATIO_GRACE, MAX_RATIO * min(info.compress_size, self.zip_size))
            with archive.open(info) as source, open(target, "wb") as sink:
                entry_bytes = 0
                while chunk := source.read(_CHUNK):
                    entry_bytes += len(chunk)
                    self.written += len(chunk)
                    if entry_bytes > allowed:
                        raise UnsafeArchive(
                            f"the zip entry {info.filename!r} unpacks to more than {MAX_RATIO} "
                            f"times its compressed size (a zip bomb); {self.zip_name} is refused"
                        )
                    if self.written > self.max_bytes:
                        raise UnsafeArchive(
                            f"the zip unpacks to more than {self.max_bytes / 1024**3:.0f} GB; "
                            "refused"
                        )
                    self._check_space(len(chunk))
                    sink.write(chunk)

    def _check_space(self, needed: int) -> None:
        free = free_bytes(self.staging)
        if free - needed < self.keep_free:
            raise UnsafeArchive(
                f"{self.zip_name} unpacks to more than the disk holding {self.staging.parent} "
                f"can spare ({free / 1024**2:.0f} MB free, {self.keep_free / 1024**2:.0f} MB of "
                "which stay untouched); free space or use a smaller zip"
            )


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
