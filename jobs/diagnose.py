"""Why a run ended badly, in words a user can act on.

Read from what the run left behind: its last event, the exit status its wrapper recorded, and
the tail of train.log. Nothing here parses logs to follow progress; the log is read only to name
the cause of a death the trainer could not report itself (a SIGKILL, a crash in native code).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass

OOM_SUGGESTION = (
    "lower the resolution or frame count of --video_resolution_buckets, store the frozen "
    "weights in fp8 (--layerwise_upcasting_modules transformer), use the 8-bit optimizer "
    "(--use_8bit_bnb), turn on --gradient_checkpointing, or lower --batch_size"
)
KILLED_SUGGESTION = (
    "a SIGKILL from outside usually means the system ran out of RAM: close other programs, "
    "turn on --precompute_conditions, or lower --dataloader_num_workers"
)


@dataclass(frozen=True)
class Diagnosis:
    status: str  # "failed" | "interrupted"
    reason: str
    suggestion: str | None = None


_OOM = re.compile(r"out of memory|OutOfMemoryError|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
_KILLED = re.compile(r"SIGKILL|Signals\.SIGKILL|signal 9\b|Killed\b")
_MISSING = re.compile(r"(FileNotFoundError|No such file or directory)[:\s]*(.*)")


def signal_name(code: int) -> str | None:
    number = -code if code < 0 else code - 128 if code > 128 else None
    if number is None:
        return None
    try:
        return signal.Signals(number).name
    except ValueError:
        return None


# torchrun's (and accelerate's multi-process launcher's) report of each rank that failed:
#   rank      : 1 (local_rank: 1)
#   exitcode  : -9 (pid: 18717)  (SIGKILL)
_LAUNCHER_FAILURE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank:[^\n]*\n\s*exitcode\s*:\s*(-?\d+)")
_LAUNCHER_REPORT = "Root Cause (first observed failure)"
# Signals the launcher itself sends the other ranks once one has failed.
_TEARDOWN_SIGNALS = ("SIGTERM", "SIGINT")


@dataclass(frozen=True)
class RankDeath:
    rank: int
    signal: str


def rank_killed(log_tail: str) -> RankDeath | None:
    """The rank a signal killed, from the launcher's failure report at the end of the log.

    The surviving ranks fail too (a collective loses its peer: "Connection reset by peer"),
    and the main rank's failed event says so; the launcher knows which rank died, and of what.
    Its own SIGTERM to the survivors is not a cause.
    """
    report = log_tail.rfind(_LAUNCHER_REPORT)
    if report < 0:
        return None
    others = log_tail.rfind("Failures:", 0, report)
    failures = _LAUNCHER_FAILURE.findall(log_tail[report:])  # the root cause first
    failures += _LAUNCHER_FAILURE.findall(log_tail[others:report]) if others >= 0 else []
    for rank, code in failures:
        name = signal_name(int(code)) if int(code) < 0 else None
        if name and name not in _TEARDOWN_SIGNALS:
            return RankDeath(int(rank), name)
    return None


def diagnose(
    exit_code: int | None,
    failed_message: str | None,
    log_tail: str,
    full_disk: str | None = None,
) -> Diagnosis:
    """The reason and a suggestion for a run that ended without `done` or `stopped`.

    `full_disk`: the sentence for the disk holding the job, when that disk is full now.
    """
    death = rank_killed(log_tail)
    if death is not None:
        return Diagnosis(
            "failed",
            f"rank {death.rank} was killed by {death.signal}; the other ranks stopped with it",
            KILLED_SUGGESTION if death.signal == "SIGKILL" else None,
        )
    text = "\n".join(filter(None, [failed_message, log_tail]))
    if _OOM.search(text):
        detail = failed_message or "the GPU ran out of memory"
        if not detail.lower().startswith("out of memory"):
            detail = f"out of memory: {detail}"
        return Diagnosis("failed", detail, OOM_SUGGESTION)
    if failed_message:
        return Diagnosis("failed", failed_message)
    name = signal_name(exit_code) if exit_code is not None else None
    if name == "SIGKILL" or _KILLED.search(log_tail):
        return Diagnosis(
            "failed", "the trainer was killed (SIGKILL) before it could report", KILLED_SUGGESTION
        )
    if full_disk:
        return Diagnosis("failed", full_disk)
    missing = _MISSING.search(log_tail)
    if missing:
        return Diagnosis("failed", f"missing file: {missing.group(2).strip()[:200]}".rstrip(": "))
    if exit_code is None:
        return Diagnosis(
            "interrupted",
            "the trainer stopped running without a final report "
            "(the machine restarted, or its process was lost)",
            "resume the job: it continues from its newest checkpoint",
        )
    if name:
        return Diagnosis("failed", f"the trainer ended on {name} before it could report")
    last_line = next((line for line in reversed(log_tail.splitlines()) if line.strip()), "")
    detail = f": {last_line.strip()[:200]}" if last_line else ""
    return Diagnosis("failed", f"the trainer exited with status {exit_code}{detail}")
