"""Which queued jobs may start now, and what every other one waits for.

A job holds its GPUs (or "the CPU" when it names none) while it is starting, running or
stopping. A queued job starts when none of its GPUs is held and no earlier queued job is waiting
for any of them, so jobs on disjoint GPUs run side by side and nobody jumps the queue. The queue
is the store's queued rows, so it outlives the app.

A job that cannot start is told why, in words a person can act on: which GPUs (or the CPU), and
which job holds them or is ahead in line. An idle preview worker holds its GPUs only for as long
as nobody else needs them: when a job that is not a preview waits for them, the worker is asked
to step aside (a preview asked for later starts a fresh worker, which waits its turn).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from jobs.store import Job

PREVIEW_KIND = "infer"


def resources(job: Job) -> set[str]:
    """What a job holds while it runs; pushes, and previews allowed on a busy GPU, hold nothing."""
    if not job.exclusive:
        return set()
    return {f"gpu:{gpu}" for gpu in job.gpu_ids} or {"cpu"}


@dataclass
class Plan:
    """One pass over the queue: what starts, what waits (and why), which workers step aside."""

    ready: list[Job] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)  # job id -> what it waits for
    step_aside: list[Job] = field(default_factory=list)  # idle preview workers to stop


def plan(
    queued: list[Job], active: list[Job], idle: Callable[[Job], bool] = lambda job: False
) -> Plan:
    """The queued jobs (given oldest first) that start now beside the active ones; `idle` tells
    whether an active preview worker is between requests (and may step aside)."""
    holders: dict[str, Job] = {}
    for job in active:
        for resource in resources(job):
            holders[resource] = job
    ahead: dict[str, Job] = {}  # resource -> the earliest queued job waiting for it
    result = Plan()
    for job in queued:
        wanted = resources(job)
        blocked = wanted & (holders.keys() | ahead.keys())
        if not blocked:
            result.ready.append(job)
            holders.update(dict.fromkeys(wanted, job))
            continue
        for resource in sorted(wanted - ahead.keys()):
            ahead[resource] = job
        busy = {resource: holders[resource] for resource in blocked if resource in holders}
        queued_first = {r: ahead[r] for r in blocked if r not in busy and ahead[r] is not job}
        stepping = []
        if job.kind != PREVIEW_KIND:
            for holder in {id(h): h for h in busy.values()}.values():
                if holder.kind == PREVIEW_KIND and holder.status != "stopping" and idle(holder):
                    stepping.append(holder)
        for worker in stepping:
            if all(worker is not other for other in result.step_aside):
                result.step_aside.append(worker)
        result.reasons[job.id] = waiting_reason(busy, queued_first, stepping)
    return result


def startable(queued: list[Job], active: list[Job]) -> list[Job]:
    """The queued jobs (given oldest first) that can start beside the active ones."""
    return plan(queued, active).ready


def waiting_reason(
    busy: dict[str, Job], queued_first: dict[str, Job], stepping: list[Job] = ()
) -> str:
    """One sentence: the resources a job waits for and who holds them or is ahead of it."""
    parts = []
    for holder, held in _group(busy):
        if holder.kind == PREVIEW_KIND:
            aside = holder.status == "stopping" or any(holder is w for w in stepping)
            doing = "is idle and stepping aside" if aside else "is making a preview"
        else:
            verb = "is stopping on" if holder.status == "stopping" else "is using"
            doing = f"{verb} {_it(held)}"
        parts.append(f"{_resources_text(held)}: {_job_text(holder)} {doing}")
    for first, wanted in _group(queued_first):
        parts.append(f"{_resources_text(wanted)}: {_job_text(first)} was queued before it")
    return "waiting for " + "; and for ".join(parts) if parts else "waiting for its turn"


def _group(by_resource: dict[str, Job]) -> list[tuple[Job, list[str]]]:
    """(job, the resources it accounts for), in the order of the resources."""
    grouped: dict[int, tuple[Job, list[str]]] = {}
    for resource in sorted(by_resource, key=_resource_order):
        job = by_resource[resource]
        grouped.setdefault(id(job), (job, []))[1].append(resource)
    return list(grouped.values())


def _resource_order(resource: str) -> tuple[int, int]:
    return (0, int(resource.split(":")[1])) if resource.startswith("gpu:") else (1, 0)


def _resources_text(resources: list[str]) -> str:
    gpus = [r.split(":")[1] for r in resources if r.startswith("gpu:")]
    if not gpus:
        return "the CPU"
    if len(gpus) == 1:
        return f"GPU {gpus[0]}"
    return "GPUs " + ", ".join(gpus[:-1]) + f" and {gpus[-1]}"


def _it(resources: list[str]) -> str:
    return "them" if len(resources) > 1 else "it"


def _job_text(job: Job) -> str:
    if job.kind == PREVIEW_KIND:
        return f"the preview worker ({job.id})"
    if job.kind == "train":
        return f"the run '{job.name}' ({job.id})"
    return f"the {job.kind} job '{job.name}' ({job.id})"
