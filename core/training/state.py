"""Where a run is (step, epoch, data position) and whether it was asked to stop."""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, NamedTuple

log = logging.getLogger("core.train")

# Test-only fault switch, so the jobs layer's handling of real failures can be proven with real
# processes: "oom" raises CUDA's out-of-memory error at the first step; "kill_in_checkpoint:N"
# kills the process with SIGKILL halfway through writing the checkpoint of step N.
FAULT_ENV = "COGVIDEOX_STUDIO_FAULT"


def fault(name: str) -> str | None:
    """The argument of the injected fault `name`, or None when that fault is not set."""
    value = os.environ.get(FAULT_ENV, "")
    kind, _, argument = value.partition(":")
    return argument or "" if kind == name else None


class TrainingState:
    """Where the run is: the step and the data position.

    Registered with accelerate for checkpointing. Randomness needs no saved state: each sample's
    noise, timestep and caption dropout come from a generator seeded by (seed, step, micro-batch,
    sample), so a resumed run, or the same run on another number of processes, draws the same.
    """

    def __init__(self, seed: int):
        self.seed = seed
        self.global_step = 0
        self.epoch = 0
        self.position = 0  # micro-batches of the current epoch already consumed

    def state_dict(self) -> dict:
        return {
            "seed": self.seed,
            "global_step": self.global_step,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict) -> None:
        self.global_step = int(state["global_step"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


class PendingStep(NamedTuple):
    """A finished step whose loss (and gradient norm) may still be on the device."""

    step: int
    epoch: int
    loss: Any  # a 0-d tensor
    grad_norm: Any  # a 0-d tensor, a float, or None before the first optimizer step
    lr: float
    samples: int


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: finish the step, checkpoint, report `stopped`."""


class StopSignals:
    """SIGINT/SIGTERM ask the run to stop after the current step; a second one stops at once."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def check(self) -> None:
        """Raise StopRequested if a stop was asked for (between units of work)."""
        if self.signal is not None:
            raise StopRequested

    def exit_status(self) -> int:
        return 128 + (self.signal or signal.SIGTERM)

    def _handle(self, signum, _frame) -> None:
        if self.signal is not None:  # a second signal: stop now, without saving
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("Received %s: stopping after the current step", signal.Signals(signum).name)
