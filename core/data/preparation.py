"""What the dataset-preparation commands (split, caption) share as jobs: events, stop, exit status.

Both report on the same event stream as training (`--events FILE`: progress with items a minute
and ETA, one `item` event per clip written or left out, then done / failed / stopped), print one
human line per clip, and stop cleanly on SIGINT or SIGTERM: the clip in hand is finished or
dropped, the record saved, and the process exits with 128+signal so the job runner records a
stop. Running the same command again continues where it stopped.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
import traceback
from pathlib import Path

from core.errors import EXIT_FAILED, EXIT_USER_ERROR, UserError
from core.events import (
    DoneEvent,
    EventWriter,
    FailedEvent,
    ItemEvent,
    ProgressEvent,
    StoppedEvent,
)


class StopSignals:
    """SIGINT/SIGTERM set `event` instead of killing the process (restored on exit)."""

    def __init__(self):
        self.event = threading.Event()
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, _frame) -> None:
        self.signum = signum
        self.event.set()

    def __exit__(self, *_exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


class Reporter:
    """Progress to the events file (when given) and to stdout, with rate and ETA."""

    def __init__(self, job: str, events: str | Path | None):
        self.job = job
        self.writer = None
        if events:
            self.writer = EventWriter(Path(events).parent, filename=Path(events).name)
        self._started = time.monotonic()
        self._first_done: int | None = None
        self._phase: str | None = None
        self._last_scan = 0.0

    def emit(self, event) -> None:
        if self.writer is not None:
            self.writer.emit(event)

    def progress(self, phase: str, done: int, total: int, throttle: bool = False) -> None:
        """done of total; the rate counts this phase's items of this attempt only (so a resumed
        run's ETA is its own, and loading a model does not count against the clips)."""
        now = time.monotonic()
        if throttle and now - self._last_scan < 1.0 and done < total:
            return
        self._last_scan = now
        if self._first_done is None or done < self._first_done or phase != self._phase:
            self._first_done, self._started, self._phase = done, now, phase
        elapsed = now - self._started
        per_minute = eta = None
        if done > self._first_done and elapsed > 0:
            per_minute = (done - self._first_done) / elapsed * 60
            eta = (total - done) / per_minute * 60 if total >= done else None
        self.emit(
            ProgressEvent(
                phase=phase, done=done, total=total, per_minute=per_minute, eta_seconds=eta
            )
        )
        if not throttle:
            rate = f", {per_minute:.1f}/min" if per_minute else ""
            print(f"{phase}: {done}/{total}{rate}", flush=True)

    def item(self, file: str, status: str, reason: str | None = None) -> None:
        self.emit(ItemEvent(job=self.job, file=file, status=status, reason=reason))
        print(f"{status} {file}" + (f": {reason}" if reason else ""), flush=True)

    def finish(self, event) -> None:
        self.emit(event)
        if self.writer is not None:
            self.writer.close()


def run_reported(job: str, events: str | None, work) -> int:
    """Run `work(reporter, stop) -> (done, outputs)` as a preparation command: the exit status
    and the final event follow from how it ended."""
    reporter = Reporter(job, events)
    with StopSignals() as stop:
        try:
            done, outputs = work(reporter, stop.event)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            reporter.finish(FailedEvent(message=str(error), user_error=True))
            return EXIT_USER_ERROR
        except Exception as error:
            traceback.print_exc()
            reporter.finish(FailedEvent(message=f"{type(error).__name__}: {error}"))
            return EXIT_FAILED
        if stop.event.is_set():
            print(f"stopped after {done}; run the same command again to continue", flush=True)
            reporter.finish(StoppedEvent(step=done))
            return stop.exit_code
    reporter.finish(DoneEvent(step=done, outputs=outputs))
    return 0
