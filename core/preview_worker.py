"""The warm preview worker: `python -m core.infer serve --dir WORKER_DIR [--idle-timeout S]`.

It keeps the last base pipeline loaded (core.infer.PipelineCache), answers the requests dropped
into its folder oldest first (core/preview_protocol.py describes the layout), and exits after an
idle timeout to give the accelerator's memory back. Whatever one request does, the worker goes on
serving the next.
"""

from __future__ import annotations

import signal
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from pydantic import ValidationError

from core.config import describe_validation_error
from core.errors import UserError
from core.events import EventWriter, PreviewEvent
from core.infer import PipelineCache, generate
from core.preview_protocol import DONE_DIR, OUTPUTS_DIR, REQUESTS_DIR, PreviewRequest
from core.preview_weights import first_line


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived while a preview was being made.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way up turns
    a stop into an ordinary failure.
    """


class _StopSignals:
    """SIGTERM/SIGINT: between requests, stop after the loop's current wait; during a request,
    abandon it at once (the next Python bytecode, i.e. after the running torch op)."""

    def __init__(self):
        self.requested = False
        self._busy = False
        self._previous = {
            signum: signal.signal(signum, self._handle)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, _signum, _frame) -> None:
        self.requested = True
        if self._busy:
            self._busy = False
            raise _Stopped

    @contextmanager
    def abandonable(self) -> Iterator[None]:
        self._busy = True
        try:
            if self.requested:
                raise _Stopped
            yield
        finally:
            self._busy = False

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _next_request(inbox: Path) -> Path | None:
    """The oldest request file (by the time it was written, then by name), or None."""
    pending = []
    for path in inbox.glob("*.json"):
        with suppress(FileNotFoundError):  # taken back by its client meanwhile
            pending.append((path.stat().st_mtime_ns, path.name, path))
    return min(pending)[2] if pending else None


def _describe_request_error(error: ValidationError) -> str:
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request is not valid JSON ({first.get('msg', '')})"
    if first.get("type") == "extra_forbidden":
        field = ".".join(str(part) for part in first.get("loc", ()))
        return f"the request has a field this worker does not know: {field}"
    return "the request's " + describe_validation_error(error).lstrip("-")


def serve(worker_dir: str | Path, idle_timeout: float = 600.0, poll_seconds: float = 0.2) -> int:
    """Answer preview requests in worker_dir, oldest first, until idle for idle_timeout seconds
    or stopped by SIGTERM/SIGINT. Returns the exit status (0)."""
    worker_dir = Path(worker_dir)
    inbox = worker_dir / REQUESTS_DIR
    (inbox / DONE_DIR).mkdir(parents=True, exist_ok=True)
    (worker_dir / OUTPUTS_DIR).mkdir(parents=True, exist_ok=True)
    stop = _StopSignals()
    events = EventWriter(worker_dir)
    cache = PipelineCache()
    print(
        f"preview worker: serving {inbox} on {cache.device}, "
        f"exiting after {idle_timeout:g} s without requests",
        flush=True,
    )
    idle_since = time.monotonic()
    try:
        while not stop.requested:
            path = _next_request(inbox)
            if path is None:
                if time.monotonic() - idle_since >= idle_timeout:
                    print("preview worker: idle, exiting to free its memory", flush=True)
                    break
                time.sleep(poll_seconds)
                continue
            _serve_one(path, worker_dir, cache, events, stop)
            idle_since = time.monotonic()
        if stop.requested:
            print("preview worker: stopped", flush=True)
    finally:
        events.close()
        stop.restore()
    return 0


def _serve_one(
    path: Path, worker_dir: Path, cache: PipelineCache, events: EventWriter, stop: _StopSignals
) -> None:
    """One request, start to final event; whatever goes wrong, the worker goes on serving."""
    request_id = path.stem
    received = time.perf_counter()
    first_step: list[float] = []

    def emit(status: str, **fields) -> None:
        event = PreviewEvent(
            request_id=request_id, status=status, base_loads=cache.base_loads, **fields
        )
        events.emit(event)

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return  # taken back by its client (to hand it to another worker): not ours to answer
    emit("started")
    try:
        request = PreviewRequest.model_validate_json(text)
        out = worker_dir / OUTPUTS_DIR / f"{request_id}.mp4"
        with stop.abandonable():
            result = generate(
                request,
                cache,
                out,
                on_first_step=lambda: first_step.append(time.perf_counter() - received),
                on_status=emit,
            )
    except _Stopped:
        message = "the preview worker was stopped before this preview was finished"
    except ValidationError as error:
        message = _describe_request_error(error)
    except UserError as error:
        message = str(error)
    except Exception as error:  # a bug or an out-of-memory must not take the worker down
        traceback.print_exc()
        cache.clear()  # its state after an unexpected error is unknown: start the next one clean
        message = f"the preview failed: {type(error).__name__}: {first_line(error)}"
    else:
        message = None
    if message is None:
        files = [result.path, result.settings_path]
        emit(
            "done",
            files=[str(file.relative_to(worker_dir)) for file in files],
            seconds=time.perf_counter() - received,
            first_step_seconds=first_step[0] if first_step else None,
        )
        print(f"preview {request_id}: done in {time.perf_counter() - received:.1f} s", flush=True)
    else:
        emit("failed", message=message, seconds=time.perf_counter() - received)
        print(f"preview {request_id}: failed: {message}", flush=True)
    with suppress(FileNotFoundError):
        path.replace(worker_dir / REQUESTS_DIR / DONE_DIR / path.name)
