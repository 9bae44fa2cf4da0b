"""Preview requests for the warm preview worker, from the web process (torch-free).

A worker is a job of kind `infer` that keeps the last base pipeline loaded and serves requests
dropped into its folder (`core.preview_protocol`). A request goes to the worker already running
on the same GPUs, or starts one; when a worker has exited (idle, or lost) before it took a
request, the request moves to a fresh worker, so a preview is never left waiting on nobody.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from core.preview_protocol import FINAL_STATUSES, REQUESTS_DIR, PreviewRequest, result, submit
from jobs.spec import InferSettings, JobSpec
from jobs.store import ACTIVE, Job

if TYPE_CHECKING:  # the runner asks this module whether a worker is idle: no import cycle
    from jobs.runner import Runner

WORKER_NAME = "preview worker"


@dataclass(frozen=True)
class Ticket:
    worker_id: str
    request_id: str


def find_worker(runner: Runner, gpu_ids: list[int]) -> Job | None:
    """A preview worker that is queued or running on exactly these GPUs."""
    for job in runner.store.list(("queued", *ACTIVE)):
        if job.kind == "infer" and job.status != "stopping" and job.gpu_ids == sorted(gpu_ids):
            return job
    return None


def start_worker(
    runner: Runner, gpu_ids: list[int], allow_busy_gpu: bool = False, idle_timeout: float = 600.0
) -> Job:
    spec = JobSpec(
        name=WORKER_NAME,
        kind="infer",
        gpu_ids=gpu_ids,
        infer=InferSettings(idle_timeout=idle_timeout, allow_busy_gpu=allow_busy_gpu),
    )
    return runner.submit(spec)


def worker_is_idle(job: Job) -> bool:
    """Whether a preview worker is between requests: none waits in its folder or is being made
    (a request file leaves the inbox only once it has been answered)."""
    inbox = Path(job.job_dir) / REQUESTS_DIR
    return not any(inbox.glob("*.json"))


def request_preview(
    runner: Runner, request: PreviewRequest, gpu_ids: list[int], allow_busy_gpu: bool = False
) -> Ticket:
    worker = find_worker(runner, gpu_ids) or start_worker(runner, gpu_ids, allow_busy_gpu)
    return Ticket(worker.id, submit(Path(worker.job_dir), request))


def poll_preview(runner: Runner, ticket: Ticket):
    """(ticket, the request's latest PreviewEvent or None): its final one (done or failed)
    once there is one. The ticket changes if the request had to move to another worker."""
    runner.poll()
    worker = runner.store.get(ticket.worker_id)
    if worker is None:
        return ticket, None
    event = result(Path(worker.job_dir), ticket.request_id, final_only=False)
    if not worker.finished or (event is not None and event.status in FINAL_STATUSES):
        return ticket, event
    pending = Path(worker.job_dir) / "requests" / f"{ticket.request_id}.json"
    if not pending.is_file():
        return ticket, None
    fresh = find_worker(runner, worker.gpu_ids) or start_worker(
        runner, worker.gpu_ids, not worker.exclusive
    )
    target = Path(fresh.job_dir) / "requests"
    target.mkdir(parents=True, exist_ok=True)
    shutil.move(str(pending), target / pending.name)
    return Ticket(fresh.id, ticket.request_id), None
