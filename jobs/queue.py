"""Which queued jobs may start now: first in, first out per GPU set.

A job holds its GPUs (or "the CPU" when it names none) while it is starting, running or
stopping. A queued job starts when none of its GPUs is held and no earlier queued job is waiting
for any of them, so jobs on disjoint GPUs run side by side and nobody jumps the queue. The queue
is the store's queued rows, so it outlives the app.
"""

from __future__ import annotations

from jobs.store import Job


def resources(job: Job) -> set[str]:
    """What a job holds while it runs; pushes, and previews allowed on a busy GPU, hold nothing."""
    if not job.exclusive:
        return set()
    return {f"gpu:{gpu}" for gpu in job.gpu_ids} or {"cpu"}


def startable(queued: list[Job], active: list[Job]) -> list[Job]:
    """The queued jobs (given oldest first) that can start beside the active ones."""
    held: set[str] = set().union(*(resources(job) for job in active)) if active else set()
    waiting: set[str] = set()
    ready = []
    for job in queued:
        wanted = resources(job)
        if wanted & (held | waiting):
            waiting |= wanted
            continue
        ready.append(job)
        held |= wanted
    return ready
