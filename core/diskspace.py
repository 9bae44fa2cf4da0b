"""Telling a full disk apart from other failures, and saying so in one sentence.

A full disk shows up as `OSError(ENOSPC)` (or EDQUOT, a quota) from plain writes, but torch's
savers report it in their own words ("PytorchStreamWriter failed writing file",
"basic_ios::clear: iostream error") with no errno: those count as a full disk only when the disk
really is (nearly) full. Torch-free: the trainer, the jobs layer and the dataset importer use it.
"""

from __future__ import annotations

import errno
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# What torch's and safetensors' writers say when a write fails, without an errno.
_WRITE_FAILED = re.compile(
    r"failed writing file|file write failed|iostream error|No space left on device|"
    r"Disk quota exceeded|Write error|unexpected pos \d+ vs",
    re.IGNORECASE,
)
NEARLY_FULL_BYTES = 64 * 1024**2  # below this (or 1% of the disk) a disk counts as full


def _existing(path: str | Path) -> Path:
    """The path itself or its nearest existing parent (what holds it, or will)."""
    candidate = Path(path).expanduser().absolute()
    while not candidate.exists() and candidate != candidate.parent:
        candidate = candidate.parent
    return candidate


def free_bytes(path: str | Path) -> int:
    """Bytes an unprivileged writer may still use on the disk holding `path`."""
    return shutil.disk_usage(_existing(path)).free


def nearly_full(path: str | Path) -> bool:
    """Whether the disk holding `path` has less than 64 MB, or 1% of its size, free."""
    usage = shutil.disk_usage(_existing(path))
    return usage.free < min(NEARLY_FULL_BYTES, usage.total // 100)


def full_disk_sentence(path: str | Path, advice: str = "free space and resume") -> str:
    """'the disk holding X is full (N MB free); <advice>'."""
    free_mb = free_bytes(path) // 1024**2
    return f"the disk holding {path} is full ({free_mb} MB free); {advice}"


def _chain(error: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_full_disk_error(error: BaseException) -> bool:
    """Whether the error, or one that caused it, is ENOSPC or EDQUOT."""
    return any(isinstance(e, OSError) and e.errno in FULL_ERRNOS for e in _chain(error))


def full_disk_reason(
    error: BaseException, paths: Iterable[str | Path], advice: str = "free space and resume"
) -> str | None:
    """The one sentence for a failure caused by a full disk, or None if it was not one.

    Names the disk of the file that failed when the error says which, else the fullest of
    `paths` (the output, the cache).
    """
    candidates = [Path(p) for p in paths if p]
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno in FULL_ERRNOS and link.filename:
            candidates.insert(0, Path(str(link.filename)).parent)
            break
    if not candidates:
        return None
    fullest = min(candidates, key=free_bytes)
    if is_full_disk_error(error):
        return full_disk_sentence(fullest, advice)
    if any(_WRITE_FAILED.search(str(link)) for link in _chain(error)) and nearly_full(fullest):
        return full_disk_sentence(fullest, advice)
    return None


class _LossyStream:
    """A text stream that drops what it cannot write because the disk is full."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError as error:
            if error.errno not in FULL_ERRNOS:
                raise
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as error:
            if error.errno not in FULL_ERRNOS:
                raise

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def tolerate_full_disk_in_std_streams() -> None:
    """Let stdout and stderr drop lines on a full disk instead of crashing the process.

    A job's stdout and stderr are its train.log: on a full disk a log line cannot be written,
    and the run must still get as far as reporting why it failed (through the event stream's
    reserve, core/events.py). Call before logging is set up.
    """
    if not isinstance(sys.stdout, _LossyStream):
        sys.stdout = _LossyStream(sys.stdout)
    if not isinstance(sys.stderr, _LossyStream):
        sys.stderr = _LossyStream(sys.stderr)


def full_disk_failure(
    error: BaseException, output_dir: str | Path, cache_dir: str | Path | None
) -> str | None:
    """The trainer's reason for a run a full disk ended, or None if the disk was not the cause.

    A checkpoint that could not be finished is removed, so its space is free again for the
    failed event, the exit status and the job store, and the user has less to clean up.
    """
    from core.checkpoints import discard_partial

    reason = full_disk_reason(error, [output_dir, cache_dir])
    if reason is not None:
        discard_partial(Path(output_dir))
    return reason
