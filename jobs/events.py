"""Following a run's events.jsonl: read only new bytes, and summarise what they say.

`EventTail` remembers its byte offset and keeps a half-written last line for the next read, so
a reader polling every second costs what the trainer wrote since, never a re-read of the file.
`RunSummary` folds events into what a run view shows: progress and ETA, the loss and learning
rate series (thinned to at most MAX_POINTS), the memory stage table, validation videos,
checkpoints and the final outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from core.events import EVENTS_FILE, parse_event

MAX_POINTS = 2000


class EventTail:
    def __init__(self, path: str | Path, offset: int = 0):
        self.path = Path(path)
        self.offset = offset
        self._partial = b""

    def read_new(self) -> list:
        """Events appended since the last call (a trailing half line waits for the next)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        if not data:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()  # b"" when the data ended with a newline
        events = []
        for line in lines:
            event = parse_event(line) if line.strip() else None
            if event is not None:
                events.append(event)
        return events

    @property
    def complete_offset(self) -> int:
        """The offset up to the last whole line (what a persisted reader resumes from)."""
        return self.offset - len(self._partial)


class Series:
    """(step, value) points, thinned by halving whenever they exceed MAX_POINTS.

    After k halvings only every 2**k-th step is kept, so the curve keeps its shape at any
    length and appending stays O(1) on average.
    """

    def __init__(self, limit: int = MAX_POINTS):
        self.limit = limit
        self.stride = 1
        self.steps: list[int] = []
        self.values: list[float] = []

    def add(self, step: int, value: float) -> None:
        if step % self.stride:
            return
        if self.steps and step <= self.steps[-1]:
            # A resumed attempt logs steps again from its checkpoint: its points replace them.
            while self.steps and self.steps[-1] >= step:
                self.steps.pop()
                self.values.pop()
        self.steps.append(step)
        self.values.append(value)
        if len(self.steps) > self.limit:
            self.stride *= 2
            kept = [
                (s, v) for s, v in zip(self.steps, self.values, strict=True) if s % self.stride == 0
            ]
            self.steps = [s for s, _ in kept]
            self.values = [v for _, v in kept]


@dataclass
class RunSummary:
    step: int = 0
    total_steps: int | None = None
    epoch: int = 0
    eta_seconds: float | None = None
    step_seconds: float | None = None
    last_loss: float | None = None
    loss: Series = field(default_factory=Series)
    lr: Series = field(default_factory=Series)
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    stage_device: str | None = None
    validations: dict[int, list[str]] = field(default_factory=dict)
    checkpoints: list[str] = field(default_factory=list)
    progress: tuple[str, int, int] | None = None
    preparation_rate: tuple[float, float | None] | None = None  # (a minute, ETA s): split, caption
    dataset: dict | None = None
    final: str | None = None  # "done" | "failed" | "stopped"
    final_message: str | None = None
    training_configuration: dict | None = None
    first_started: float | None = None  # the first attempt's start; a resume keeps it
    attempt_started: float | None = None  # this attempt's start

    def fold(self, events: list) -> None:
        for event in events:
            handler = getattr(self, f"_on_{event.kind}", None)
            if handler:
                handler(event)

    def _on_config(self, event) -> None:
        self.training_configuration = event.training_configuration
        self.first_started = self.first_started or event.time
        self.attempt_started = event.time
        self.total_steps = event.training_configuration.get("train steps")
        self.final = self.final_message = None  # a new attempt has started
        self.progress = None

    def _on_dataset(self, event) -> None:
        self.dataset = event.model_dump(exclude={"kind", "time"})

    def _on_progress(self, event) -> None:
        self.progress = (event.phase, event.done, event.total)
        self.preparation_rate = (event.per_minute, event.eta_seconds) if event.per_minute else None

    def _on_stage(self, event) -> None:
        self.stages[event.stage] = event.memory
        self.stage_device = event.device

    def _on_step(self, event) -> None:
        self.step, self.total_steps, self.epoch = event.step, event.total_steps, event.epoch
        self.eta_seconds, self.step_seconds = event.eta_seconds, event.step_seconds
        self.last_loss = event.loss
        self.loss.add(event.step, event.loss)
        self.lr.add(event.step, event.lr)
        self.progress = None

    def _on_validation(self, event) -> None:
        self.validations[event.step] = event.files

    def _on_checkpoint(self, event) -> None:
        if event.path not in self.checkpoints:
            self.checkpoints.append(event.path)

    def _on_done(self, event) -> None:
        self.final, self.final_message = "done", None

    def _on_failed(self, event) -> None:
        self.final, self.final_message = "failed", event.message

    def _on_stopped(self, event) -> None:
        self.final = "stopped"
        self.final_message = f"stopped at step {event.step}"


class RunFollower:
    """A summary kept current by tailing one run's events file."""

    def __init__(self, job_dir: str | Path):
        self.tail = EventTail(Path(job_dir) / EVENTS_FILE)
        self.summary = RunSummary()

    def poll(self) -> list:
        events = self.tail.read_new()
        self.summary.fold(events)
        return events
