"""The trainer's event stream: `<output_dir>/events.jsonl`, one JSON object a line.

The writer (the trainer) and every reader (jobs, UI) share these types, so a field renamed here is
renamed everywhere. Human-readable lines go to `train.log`; nothing parses those. This module
imports no torch: the web process reads events.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from core.diskspace import FULL_ERRNOS

EVENTS_FILE = "events.jsonl"
RESERVE_BYTES = 64 * 1024  # room kept for the final event of a run on a disk that fills up

# The stages of the reference guide's memory table, in its words.
STAGE_AFTER_CONDITIONS = "after precomputing conditions"
STAGE_AFTER_LATENTS = "after precomputing latents"
STAGE_BEFORE_TRAINING = "before training start"
STAGE_BEFORE_VALIDATION = "before validation start"
STAGE_AFTER_VALIDATION = "after validation end"
STAGE_AFTER_TRAINING = "after training end"


def stage_after_epoch(epoch: int) -> str:
    return f"after epoch {epoch}"


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")
    time: float = Field(default_factory=time.time)


class ConfigEvent(_Event):
    """The reference's "Training configuration" block, plus the resolved settings."""

    kind: Literal["config"] = "config"
    training_configuration: dict[str, Any]
    config: dict[str, Any]
    resumed_from_step: int = 0


class DatasetEvent(_Event):
    """What the run trains on: samples per bucket and every skipped file with its reason."""

    kind: Literal["dataset"] = "dataset"
    root: str
    layout: str
    samples: int
    buckets: dict[str, int]
    skipped: list[dict[str, str]]  # {"file", "reason"}
    long_captions: list[str] = []  # files whose caption the text encoder cannot read whole


class StageEvent(_Event):
    """Memory at one of the reference's named stages (GB)."""

    kind: Literal["stage"] = "stage"
    stage: str
    device: str
    memory: dict[str, float]


class ProgressEvent(_Event):
    """Progress of a phase before training (loading, encoding), or of a dataset-preparation
    job (splitting, captioning): done of total."""

    kind: Literal["progress"] = "progress"
    phase: str
    done: int
    total: int
    per_minute: float | None = None  # items a minute so far (dataset preparation)
    eta_seconds: float | None = None


class ItemEvent(_Event):
    """One file a dataset-preparation job wrote, or left out with the reason."""

    kind: Literal["item"] = "item"
    job: Literal["split", "caption"]
    file: str  # a clip, relative to the dataset folder (or a source, for a split's drops)
    status: Literal["written", "skipped", "dropped"]
    reason: str | None = None


class StepEvent(_Event):
    kind: Literal["step"] = "step"
    step: int
    total_steps: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float | None = None
    step_seconds: float
    samples_per_second: float
    eta_seconds: float


class ValidationEvent(_Event):
    kind: Literal["validation"] = "validation"
    step: int
    files: list[str]  # relative to the output dir
    prompts: list[str]


class CheckpointEvent(_Event):
    kind: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str


class DoneEvent(_Event):
    kind: Literal["done"] = "done"
    step: int
    outputs: list[str]


class FailedEvent(_Event):
    kind: Literal["failed"] = "failed"
    message: str
    user_error: bool = False
    step: int | None = None
    exit_code: int | None = None  # the trainer's own (a launcher may report another)


class StoppedEvent(_Event):
    kind: Literal["stopped"] = "stopped"
    step: int
    checkpoint: str | None = None
    exit_code: int | None = None  # 128 + the signal that stopped it
    message: str | None = None  # why, when the job was stopped before the trainer ran


class PreviewEvent(_Event):
    """An inference preview request's progress (written by the warm preview worker)."""

    kind: Literal["preview"] = "preview"
    request_id: str
    status: Literal["started", "loading", "generating", "done", "failed"]
    files: list[str] = []  # relative to the worker's folder
    message: str | None = None
    seconds: float | None = None  # request received to files written
    first_step_seconds: float | None = None  # request received to the first denoising step
    base_loads: int = 0  # how many times this worker has loaded a base pipeline so far


class PushEvent(_Event):
    """Progress of a push to the Hugging Face Hub."""

    kind: Literal["push"] = "push"
    repo_id: str
    phase: Literal["creating repo", "uploading", "done", "failed"]
    done: int = 0
    total: int = 0
    url: str | None = None
    message: str | None = None


Event = Annotated[
    ConfigEvent
    | DatasetEvent
    | StageEvent
    | ProgressEvent
    | ItemEvent
    | StepEvent
    | ValidationEvent
    | CheckpointEvent
    | DoneEvent
    | FailedEvent
    | StoppedEvent
    | PreviewEvent
    | PushEvent,
    Field(discriminator="kind"),
]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)
FINAL_KINDS = frozenset({"done", "failed", "stopped"})


def parse_event(line: str | bytes) -> Event | None:
    """One line of events.jsonl to its typed event; None for a blank or unknown line."""
    try:
        return _EVENT_ADAPTER.validate_json(line)
    except ValidationError:
        return None


class EventWriter:
    """Appends events to events.jsonl, one whole line each, seen by tailing readers at once.

    The file is opened for append, never truncated: a resumed run continues the same stream and
    an earlier run's events are never lost. A line is never left torn: a write that fails
    halfway (a full disk) is cut back to where it began, and a writer that finds the file ending
    mid-line (a process killed while writing) starts on a fresh line. A small reserve file kept
    beside the stream is given up on a full disk so that the run's final event (why it failed)
    can still be written.
    """

    def __init__(
        self,
        output_dir: str | Path,
        enabled: bool = True,
        filename: str = EVENTS_FILE,
        reserve: bool = True,
    ):
        self.path = Path(output_dir) / filename
        self.enabled = enabled
        self._fd: int | None = None
        self._reserve: Path | None = None
        if not enabled:
            return
        self._fresh_line = not _ends_a_line(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if reserve:
            self._reserve = self.path.with_name(f".{filename}.reserve")
            _make_reserve(self._reserve)

    def emit(self, event: _Event) -> None:
        if self._fd is None:
            return
        line = event.model_dump_json().encode() + b"\n"
        try:
            self._append(line)
        except OSError as error:
            if error.errno not in FULL_ERRNOS or event.kind not in FINAL_KINDS:
                raise
            if not self._release_reserve():
                raise
            self._append(line)  # the run's last word, in the space the reserve kept

    def _append(self, line: bytes) -> None:
        if self._fresh_line:
            line = b"\n" + line
        start = os.fstat(self._fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                self._fresh_line = True  # the torn part stays: the next line starts afresh
            raise
        self._fresh_line = False

    def _release_reserve(self) -> bool:
        """Give the reserve's space back to the disk; whether there was one to give."""
        if self._reserve is None or not self._reserve.exists():
            return False
        self._reserve.unlink()
        self._reserve = None
        return True

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as error:
            if error.errno not in FULL_ERRNOS:
                raise
        finally:
            os.close(self._fd)
            self._fd = None
            if self._reserve is not None:
                self._reserve.unlink(missing_ok=True)


def _ends_a_line(path: Path) -> bool:
    """Whether the file is empty, missing, or ends with a newline."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() == 0:
                return True
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"
    except FileNotFoundError:
        return True


def _make_reserve(path: Path) -> None:
    """Set RESERVE_BYTES of disk aside (kept from an earlier attempt if it is still there)."""
    try:
        with open(path, "ab") as handle:
            if os.fstat(handle.fileno()).st_size < RESERVE_BYTES:
                os.posix_fallocate(handle.fileno(), 0, RESERVE_BYTES)
    except OSError as error:
        # A disk already full keeps no reserve; the run reports what it can.
        path.unlink(missing_ok=True)
        if error.errno not in (*FULL_ERRNOS, errno.EOPNOTSUPP, errno.EINVAL):
            raise


def read_events(path: str | Path) -> list[Event]:
    """Every event of a file (tests and small tools; live readers tail by offset instead)."""
    events = []
    with open(path, "rb") as handle:
        for line in handle:
            event = parse_event(line)
            if event is not None:
                events.append(event)
    return events
