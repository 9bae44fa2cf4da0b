"""A run whose disk fills up, told from inside a small tmpfs (tests/test_faults.py mounts it).

`python -m tests.full_disk_story WORKSPACE MODEL DATA CACHE BIG_ZIP` runs in a mount namespace
where WORKSPACE is a tmpfs of a few MB, so everything the jobs write (the store, the job
folder, its checkpoints and events) meets a real ENOSPC. It prints one JSON report of what a
user would have seen; the test asserts on it. The story:

1. a zip bigger than the disk can take is uploaded: refused, nothing left behind;
2. a run trains; the disk is filled between checkpoints (the trainer paused while it fills):
   the run fails naming the full disk, `python -m jobs list` still reads the store on the
   still-full disk, and every line of the event stream is whole;
3. space is freed and the run resumed; the disk is filled again leaving room for a few event
   lines but not a checkpoint: the run fails naming the full disk at its checkpoint, the
   unfinished checkpoint is removed and the previous one is intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from core.checkpoints import list_checkpoints
from core.data.importing import import_files
from core.errors import UserError
from core.events import parse_event, read_events
from jobs.events import EventTail
from jobs.runner import Runner
from jobs.spec import JobSpec

# A tmpfs file's last page has room for about 11 more event lines after the disk is full;
# filled right after a checkpoint, the next checkpoint is out of their reach.
CHECKPOINT_EVERY = 20
ROOM_FOR_EVENTS = 24 * 1024  # about 70 step events fit; a checkpoint (about 60 KB) does not


def fill(disk: Path, name: str, leave: int = 0) -> Path:
    """Write zeros until the disk is full, then give back `leave` bytes."""
    filler = disk / name
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(bytes(64 * 1024))
        except OSError:
            pass  # ENOSPC: the disk is full, which is the point
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def attempt_events(runner: Runner, job_id: str) -> list:
    job = runner.store.get(job_id)
    return EventTail(Path(job.job_dir) / "events.jsonl", job.attempt_offset).read_new()


def wait_until(check, timeout: float = 180.0, state=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the story did not get there in time; {state()}")
        time.sleep(0.1)


def job_state(runner: Runner, job_id: str) -> str:
    """What the job's record and the end of its log say, for a story that got stuck."""
    job = runner.store.get(job_id)
    log = Path(job.job_dir) / "train.log"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
    return f"job {job.status} (pid {job.pid}, reason {job.reason!r}); its log ends:\n{tail}"


def fill_while_paused(
    runner: Runner, job_id: str, disk: Path, name: str, leave: int, after: str
) -> None:
    """Once the running attempt has reported an event of kind `after`, pause its trainer, fill
    the disk, and let it go on; returns when the attempt has ended."""
    wait_until(
        lambda: any(e.kind == after for e in attempt_events(runner, job_id)),
        state=lambda: job_state(runner, job_id),
    )
    trainers = runner._trainers(runner.store.get(job_id))
    for trainer in trainers:
        trainer.suspend()
    fill(disk, name, leave)
    for trainer in trainers:
        trainer.resume()
    job_dir = Path(runner.store.get(job_id).job_dir)
    wait_until(lambda: any(job_dir.glob("exit_code*")), state=lambda: job_state(runner, job_id))


def record(runner: Runner, job_id: str) -> dict:
    job = runner.store.get(job_id)
    failed = [e for e in read_events(Path(job.job_dir) / "events.jsonl") if e.kind == "failed"]
    return {
        "status": job.status,
        "reason": job.reason,
        "exit_code": job.exit_code,
        "failed_at_step": failed[-1].step if failed else None,
        "events_whole": events_are_whole(Path(job.job_dir)),
    }


def events_are_whole(job_dir: Path) -> bool:
    data = (job_dir / "events.jsonl").read_bytes()
    lines = data.split(b"\n")
    return data.endswith(b"\n") and all(parse_event(line) for line in lines[:-1])


def main(workspace: str, model: str, data: str, cache: str, big_zip: str) -> dict:
    disk = Path(workspace)
    report: dict = {"disk_bytes": os.statvfs(disk).f_blocks * os.statvfs(disk).f_frsize}
    datasets = disk / "workspace" / "datasets"
    try:
        import_files([big_zip], datasets / "big")
        report["big_zip"] = None
    except UserError as error:
        report["big_zip"] = str(error)
    report["left_in_datasets"] = sorted(p.name for p in datasets.glob("*")) + sorted(
        p.name for p in datasets.glob(".*")
    )

    runner = Runner(disk / "workspace")
    spec = JobSpec(
        name="fills the disk",
        train={
            "pretrained_model_name_or_path": model,
            "data_root": data,
            "cache_dir": cache,  # the encoded clips live elsewhere: the run's own files fill up
            "video_resolution_buckets": ["9x32x32"],
            "precompute_conditions": True,
            "train_steps": 100_000,
            "checkpointing_steps": CHECKPOINT_EVERY,
            "checkpointing_limit": 1,
            "seed": 0,
            "rank": 4,
            "lora_alpha": 4,
        },
    )
    job = runner.submit(spec)
    job_dir = Path(job.job_dir)

    # 2. Full between checkpoints: the next event line cannot be written.
    fill_while_paused(runner, job.id, disk, "filler", leave=0, after="checkpoint")
    listing = fill(disk, "more filler")  # whatever the failed run gave back
    report["free_while_listing"] = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    listed = subprocess.run(
        [sys.executable, "-m", "jobs", "--workspace", str(disk / "workspace"), "list", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    report["list_on_full_disk"] = {
        "exit": listed.returncode,
        "jobs": json.loads(listed.stdout) if listed.returncode == 0 else None,
        "stderr": listed.stderr,
    }
    for filler in (disk / "filler", listing):
        filler.unlink()
    runner.wait(job.id, 60)
    report["between"] = record(runner, job.id)
    report["checkpoints_before"] = [step for step, _ in list_checkpoints(job_dir)]

    # 3. Full at a checkpoint: room for a few event lines, not for the checkpoint.
    runner.resume(job.id)
    fill_while_paused(runner, job.id, disk, "filler", leave=ROOM_FOR_EVENTS, after="step")
    (disk / "filler").unlink()
    runner.wait(job.id, 60)
    report["at_checkpoint"] = record(runner, job.id)
    configs = [e for e in read_events(job_dir / "events.jsonl") if e.kind == "config"]
    report["resumed_from_step"] = configs[-1].resumed_from_step
    report["checkpoints_after"] = [step for step, _ in list_checkpoints(job_dir)]
    report["left_in_job_folder"] = sorted(p.name for p in job_dir.glob(".*"))
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
