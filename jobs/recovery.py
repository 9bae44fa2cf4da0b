"""Adding back the job folders the job list lacks: the folders are the record, jobs.db an index.

A folder under `runs/` with no row in the store (the store was damaged and replaced, deleted,
emptied, or is being read from a full disk) is indexed again from what it holds: its spec.json
(name, kind, GPUs), its events (steps, each attempt's final event), the exit status its wrapper
recorded, and the processes still running with its marker. A job still running is adopted as
running and followed as before; one that has ended gets the status and reason the runner gives
any ended job; one that never started is queued again (a cancelled one says so in its events).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
from pydantic import ValidationError

from core.events import EVENTS_FILE, FINAL_KINDS, parse_event
from jobs.processes import marked_processes
from jobs.spec import SPEC_FILE, JobSpec
from jobs.store import Job, StoreUnwritable

if TYPE_CHECKING:
    from jobs.runner import Runner


@dataclass
class _History:
    """What a job's events file says about its attempts."""

    finals: list[tuple[int, int, object]] = field(default_factory=list)  # (start, end, event)
    events_after_last_final: bool = False
    first_time: float | None = None
    last_time: float | None = None
    last_step: object = None  # the last step event
    read_to: int = 0  # the end of the last whole line

    @property
    def attempt_offset_if_ended(self) -> int:
        """Where the last attempt's events begin, for a job that is no longer running."""
        if not self.finals:
            return 0
        start, end, _ = self.finals[-1]
        return end if self.events_after_last_final else start


def _read_history(path: Path) -> _History:
    history = _History()
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return history
    offset = 0
    for line in data.split(b"\n")[:-1]:  # a last line without its newline is not whole yet
        start, offset = offset, offset + len(line) + 1
        event = parse_event(line) if line.strip() else None
        if event is None:
            continue
        history.first_time = history.first_time or event.time
        history.last_time = event.time
        if event.kind == "step":
            history.last_step = event
        if event.kind in FINAL_KINDS:
            history.finals.append((start, offset, event))
            history.events_after_last_final = False
        else:
            history.events_after_last_final = True
    history.read_to = offset
    return history


def _created(folder: Path) -> float:
    """When the job was made: its id begins with the time (YYYYmmdd-HHMMSS)."""
    try:
        return time.mktime(time.strptime(folder.name[:15], "%Y%m%d-%H%M%S"))
    except ValueError:
        return (folder / SPEC_FILE).stat().st_mtime


def _live_processes() -> dict[str, list[psutil.Process]]:
    """Every live process that carries a job folder marker, by that folder's real path."""
    found: dict[str, list[psutil.Process]] = {}
    for process, marker in marked_processes():
        found.setdefault(os.path.realpath(marker), []).append(process)
    return found


def unindexed_folders(runner: Runner) -> list[Path]:
    runs = runner.store.runs_dir
    if not runs.is_dir():
        return []
    known = runner.store.ids()
    return sorted(p for p in runs.iterdir() if p.is_dir() and p.name not in known)


def adopt_unindexed_folders(runner: Runner) -> list[Job]:
    """Index every job folder the store lacks; returns the jobs added."""
    folders = unindexed_folders(runner)
    if not folders:
        return []
    processes = _live_processes()
    adopted = []
    try:
        for folder in folders:
            job = _adopt(runner, folder, processes.get(os.path.realpath(folder), []))
            if job is not None:
                adopted.append(job)
    except StoreUnwritable as error:
        runner.warn(str(error))
    return adopted


def _adopt(runner: Runner, folder: Path, processes: list[psutil.Process]) -> Job | None:
    from jobs.runner import EXIT_FILE, _attempt_final_event, read_exit_code

    try:
        spec = JobSpec.model_validate_json((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, ValidationError) as error:
        runner.warn(f"{folder} is not a job folder the app can read ({error}); it is not listed")
        return None
    store = runner.store
    job = store.add(
        spec.name,
        spec.kind,
        spec.gpu_ids,
        job_id=folder.name,
        exclusive=spec.exclusive,
        created=_created(folder),
    )
    history = _read_history(folder / EVENTS_FILE)
    exit_code = read_exit_code(folder)
    if processes:  # still running: followed from here on as if it had never been lost
        leader = min(processes, key=lambda p: p.create_time())
        attempt_offset = history.finals[-1][1] if history.finals else 0
        store.update(
            job.id,
            status="running",
            pid=leader.pid,
            pgid=os.getpgid(leader.pid),
            proc_start=leader.create_time(),
            started=history.first_time or leader.create_time(),
            attempts=len(history.finals) + 1,
            attempt_offset=attempt_offset,
        )
        runner._reconcile(store.get(job.id))
        return store.get(job.id)
    if exit_code is None and not history.finals and not history.events_after_last_final:
        return job  # never started: queued again
    attempt_offset = history.attempt_offset_if_ended
    step = history.last_step
    store.update(
        job.id,
        status="running",  # for a moment, so that finishing it takes the runner's one path
        started=history.first_time,
        attempts=len(history.finals) + int(history.events_after_last_final),
        attempt_offset=attempt_offset,
        events_offset=history.read_to,
        last_step=step.step if step else 0,
        total_steps=step.total_steps if step else None,
    )
    markers = [folder / EXIT_FILE, *folder.glob(f"{EXIT_FILE}.*")]
    ended = max((m.stat().st_mtime for m in markers if m.is_file()), default=history.last_time)
    final = _attempt_final_event(folder, attempt_offset)
    runner._finish(store.get(job.id), final, exit_code, ended=ended)
    return store.get(job.id)
