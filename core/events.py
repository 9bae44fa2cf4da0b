"""The trainer's event stream: `<output_dir>/events.jsonl`, one JSON object a line.

The writer (the trainer) and every reader (jobs, UI) share these types, so a field renamed here is
renamed everywhere. Human-readable lines go to `train.log`; nothing parses those. This module
imports no torch: the web process reads events.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

EVENTS_FILE = "events.jsonl"

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


class StoppedEvent(_Event):
    kind: Literal["stopped"] = "stopped"
    step: int
    checkpoint: str | None = None


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
    """Appends events to events.jsonl, one line each, flushed so tailing readers see it at once.

    The file is opened for append, never truncated: a resumed run continues the same stream and
    an earlier run's events are never lost.
    """

    def __init__(self, output_dir: str | Path, enabled: bool = True, filename: str = EVENTS_FILE):
        self.path = Path(output_dir) / filename
        self.enabled = enabled
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None  # noqa: SIM115

    def emit(self, event: _Event) -> None:
        if self._file is None:
            return
        self._file.write(event.model_dump_json() + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._file = None


def read_events(path: str | Path) -> list[Event]:
    """Every event of a file (tests and small tools; live readers tail by offset instead)."""
    events = []
    with open(path, "rb") as handle:
        for line in handle:
            event = parse_event(line)
            if event is not None:
                events.append(event)
    return events
