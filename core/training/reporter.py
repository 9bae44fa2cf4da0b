"""What the run tells the world: events, memory stages, trackers, and when steps are read back.

Reading a step's loss waits for the device to finish it, so finished steps wait in a window and
are read back together every --logging_steps steps (and before anything that reports where the
run stands: a checkpoint, a validation, the end). Every step is still reported, in order.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from pathlib import Path

import torch

from core.config import TrainConfig
from core.errors import UserError
from core.events import EventWriter, ProgressEvent, StageEvent, StepEvent
from core.training.backend import Backend
from core.training.state import PendingStep

log = logging.getLogger("core.train")


class Reporter:
    def __init__(self, config: TrainConfig, backend: Backend):
        self.config = config
        self.backend = backend
        self.events: EventWriter | None = None
        self.trackers_on = False
        self._window: list[PendingStep] = []  # steps whose loss is still on the device
        self._recent_seconds: deque[float] = deque(maxlen=20)
        self._clock = time.perf_counter()

    def open(self, output_dir: Path) -> None:
        """Start writing events (the main process only)."""
        self.events = EventWriter(output_dir, enabled=self.backend.is_main)

    def close(self) -> None:
        if self.trackers_on:
            self.trackers_on = False
            self.backend.accelerator.end_training()
        if self.events is not None:
            self.events.close()

    # ---- events -----------------------------------------------------------------------------

    def emit(self, event) -> None:
        if self.events is not None:
            self.events.emit(event)

    def progress(self, phase: str, done: int, total: int) -> None:
        self.emit(ProgressEvent(phase=phase, done=done, total=total))

    def stage(self, stage: str) -> None:
        """Memory at one of the reference's named stages."""
        from core.memory import memory_snapshot

        device = self.backend.device
        memory = memory_snapshot(device)
        self.emit(StageEvent(stage=stage, device=str(device), memory=memory))
        log.info("Memory %s: %s", stage, memory)

    # ---- trackers ---------------------------------------------------------------------------

    def start_trackers(self, output_dir: Path) -> None:
        if self.config.report_to == "none":
            return
        flat = {
            key: (" ".join(map(str, value)) if isinstance(value, list) else value)
            for key, value in self.config.model_dump(mode="json").items()
        }
        flat = {key: ("" if value is None else value) for key, value in flat.items()}
        logging_dir = output_dir / self.config.logging_dir
        logging_dir.mkdir(parents=True, exist_ok=True)
        # wandb writes beside the run, not into whatever folder the trainer was started from.
        init_kwargs = {"wandb": {"dir": str(logging_dir)}}
        self.backend.accelerator.init_trackers(
            self.config.tracker_name, config=flat, init_kwargs=init_kwargs
        )
        self.trackers_on = True

    def log_videos(self, paths: list[Path], step: int) -> None:
        """Validation videos to the tracker that shows them (wandb)."""
        if not self.trackers_on or self.config.report_to != "wandb":
            return
        import wandb

        tracker = self.backend.accelerator.get_tracker("wandb", unwrap=True)
        tracker.log({"validation": [wandb.Video(str(path)) for path in paths]}, step=step)

    # ---- steps ------------------------------------------------------------------------------

    def record(self, pending: PendingStep) -> None:
        """A finished step; reported at the next flush."""
        self._window.append(pending)

    @property
    def pending(self) -> bool:
        return bool(self._window)

    def due(self, step: int) -> bool:
        """Whether steps up to `step` are read back now (--logging_steps, and the last step)."""
        return step % self.config.logging_steps == 0 or step == self.config.train_steps

    def restart_clock(self) -> None:
        """Time spent outside steps (checkpoints, validation) is no step's time."""
        self._clock = time.perf_counter()

    def flush(self) -> None:
        """Read the window's losses and gradient norms back in one transfer; report each step."""
        if not self._window:
            return
        config = self.config
        device = self.backend.device
        window, self._window = self._window, []
        now = time.perf_counter()
        seconds = (now - self._clock) / len(window)  # queued steps share the time
        self._clock = now
        nan = torch.full((), float("nan"), device=device)
        values = [pending.loss.float() for pending in window]
        values += [
            nan if pending.grad_norm is None else torch.as_tensor(pending.grad_norm).float()
            for pending in window
        ]
        numbers = torch.stack([value.to(device) for value in values]).tolist()
        losses, norms = numbers[: len(window)], numbers[len(window) :]
        for pending, loss_value, norm_value in zip(window, losses, norms, strict=True):
            if not math.isfinite(loss_value):
                raise UserError(
                    f"the loss became {loss_value} at step {pending.step}: lower --lr, or "
                    "train the transformer in bf16/fp32 rather than fp16"
                )
            norm = None if pending.grad_norm is None else norm_value
            self._recent_seconds.append(seconds)
            recent = self._recent_seconds
            self.emit(
                StepEvent(
                    step=pending.step,
                    total_steps=config.train_steps,
                    epoch=pending.epoch,
                    loss=loss_value,
                    lr=pending.lr,
                    grad_norm=norm,
                    step_seconds=seconds,
                    samples_per_second=pending.samples / seconds if seconds else 0.0,
                    eta_seconds=(config.train_steps - pending.step) * sum(recent) / len(recent),
                )
            )
            if self.trackers_on:
                self.backend.accelerator.log(
                    {"loss": loss_value, "lr": pending.lr, "grad_norm": norm or 0.0},
                    step=pending.step,
                )
