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


def diagnose(exit_code: int | None, failed_message: str | None, log_tail: str) -> Diagnosis:
    """The reason and a suggestion for a run that ended without `done` or `stopped`."""
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
