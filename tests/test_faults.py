"""Faults a run must survive with a truthful status and reason, losing nothing finished.

The fourteen faults of the suite, and where each is proven with real processes:

| fault | test |
| --- | --- |
| trainer SIGKILL | test_jobs.py::test_kill_9_fails_with_a_reason_and_a_lone_sigterm_... |
| trainer SIGTERM alone | the same test (stopped, checkpointed, exit 143) |
| SIGKILL inside a checkpoint | test_jobs.py::test_killed_while_checkpointing_... |
| out of memory | test_jobs.py::test_out_of_memory_fails_with_the_reason_and_a_suggestion |
| disk full between checkpoints | here: test_a_full_disk_... (a real ENOSPC on a small tmpfs) |
| disk full at a checkpoint | the same test |
| app SIGKILL and restart | test_jobs.py::test_the_run_outlives_the_app_that_started_it |
| rank 1 SIGKILLed (two processes) | test_multiprocess.py::test_a_killed_rank_fails_the_job_... |
| rank 0 SIGKILLed (two processes) | the same test |
| Hub connection dropped mid-push | test_hub.py::test_a_dropped_commit_is_one_sentence_and_... |
| the same spec started twice | test_jobs.py::test_cli_start_show_list_and_the_same_run_twice |
| stop pressed twice | test_jobs.py::test_stop_twice_and_cancel_... and the CLI test there |
| damaged or missing store | here: test_a_damaged_or_missing_store_is_rebuilt_from_the_job_folders |
| queue advance, nobody polling | test_jobs.py::test_the_queue_advances_with_nobody_polling_... |
| a stale look at a resumed run | here: test_a_tick_that_saw_the_last_attempt_end_leaves_... |
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.events import (
    ConfigEvent,
    DoneEvent,
    EventWriter,
    FailedEvent,
    StepEvent,
    StoppedEvent,
    read_events,
)
from jobs.__main__ import main as jobs_main
from jobs.events import EventTail
from jobs.runner import Runner
from tests.job_folders import job_folder, run_as_sleeper

REPO = Path(__file__).resolve().parents[1]
FULL_DISK = re.compile(r"^the disk holding \S+ is full \(\d+ MB free\); free space and resume$")


def step(number: int, total: int = 4) -> StepEvent:
    return StepEvent(
        step=number,
        total_steps=total,
        epoch=1,
        loss=0.5,
        lr=1e-4,
        step_seconds=0.1,
        samples_per_second=10.0,
        eta_seconds=0.0,
    )


def workspace_of_every_kind(runner: Runner, busy_cpu) -> None:
    """Jobs that succeeded, failed, stopped, were killed, cancelled, run, and wait."""
    config = ConfigEvent(training_configuration={"train steps": 4}, config={})
    ended = [
        job_folder(runner, "done", [config, step(1), step(2), DoneEvent(step=2, outputs=[])], 0),
        job_folder(
            runner,
            "out of memory",
            [config, step(1), FailedEvent(message="out of memory: CUDA", step=1, exit_code=1)],
            1,
        ),
        job_folder(
            runner,
            "stopped",
            [config, step(1), StoppedEvent(step=1, checkpoint="checkpoint-1", exit_code=130)],
            1,
        ),
        job_folder(runner, "killed", [config, step(1), step(2)], 128 + signal.SIGKILL),
    ]
    for job in ended:  # as if their processes had just ended: the runner records how
        runner.store.update(job.id, status="running")
    runner.stop(job_folder(runner, "cancelled").id)
    busy_cpu(runner)
    job_folder(runner, "waits")
    runner.reconcile()


def listed(workspace: Path, capsys) -> tuple[list[dict], str]:
    assert jobs_main(["--workspace", str(workspace), "list", "--json"]) == 0
    captured = capsys.readouterr()
    kept = ("id", "name", "status", "reason", "suggestion", "exit_code", "last_step", "pid")
    jobs = [{key: job[key] for key in kept} for job in json.loads(captured.out)]
    return sorted(jobs, key=lambda job: job["id"]), captured.err


@pytest.mark.parametrize("damage", ["truncated", "random bytes", "emptied", "deleted"])
def test_a_damaged_or_missing_store_is_rebuilt_from_the_job_folders(
    damage, tmp_path, busy_cpu, capsys
):
    workspace = tmp_path / "workspace"
    runner = Runner(workspace)
    workspace_of_every_kind(runner, busy_cpu)
    before, _ = listed(workspace, capsys)
    assert {job["name"]: job["status"] for job in before} == {
        "done": "succeeded",
        "out of memory": "failed",
        "stopped": "stopped",
        "killed": "failed",
        "cancelled": "stopped",
        "holds the cpu": "running",
        "waits": "queued",
    }
    runner.store.close()
    store = workspace / "jobs.db"
    size = store.stat().st_size
    if damage == "truncated":
        os.truncate(store, size // 2)
    elif damage == "random bytes":
        store.write_bytes(os.urandom(size))
    elif damage == "emptied":
        os.truncate(store, 0)
    else:
        store.unlink()
    damaged = store.read_bytes() if store.exists() else None

    after, warning = listed(workspace, capsys)
    assert after == before  # every job, with the status and reason it had
    if damage in ("truncated", "random bytes"):
        kept = list(workspace.glob("jobs.db.damaged-*"))
        assert len(kept) == 1 and kept[0].read_bytes() == damaged
        assert f"was kept as {kept[0].name}" in warning
        assert "7 jobs read back from their folders" in warning
    else:
        assert "the job list lacked 7 jobs" in warning
    assert warning.count("warning:") == 1
    assert listed(workspace, capsys) == (before, "")  # said once


def test_event_lines_are_never_torn_for_readers_or_the_next_writer(tmp_path):
    """A writer killed mid-line leaves half a line: readers skip it, the next writer starts on
    a fresh line (a write that fails on a full disk is cut back; see the full-disk test)."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(step(1).model_dump_json().encode()[:40])
    tail = EventTail(path)
    assert tail.read_new() == [] and read_events(path) == []
    writer = EventWriter(tmp_path)
    writer.emit(StoppedEvent(step=1))
    writer.close()
    assert [event.kind for event in read_events(path)] == ["stopped"]
    assert [event.kind for event in tail.read_new()] == ["stopped"]
    assert not (tmp_path / ".events.jsonl.reserve").exists()  # its reserve goes with it


def unshare_works() -> bool:
    try:
        probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


@pytest.mark.skipif(
    not unshare_works(),
    reason="mounting a small tmpfs needs user namespaces (unshare -rm), not allowed here",
)
def test_a_full_disk_between_and_at_a_checkpoint_is_named_and_nothing_finished_is_lost(
    tiny_models, reference_dataset, subprocess_env, tmp_path
):
    """A real ENOSPC: the workspace is a 12 MB tmpfs in a mount namespace of its own
    (unprivileged), and tests/full_disk_story.py tells what happens inside it."""
    big_zip = tmp_path / "big.zip"
    with zipfile.ZipFile(big_zip, "w", zipfile.ZIP_STORED) as archive:  # no bomb: just big
        archive.writestr("clips/a.mp4", os.urandom(16 * 1024**2))
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = 'mount -t tmpfs -o size=12m tmpfs "$0" && exec "$@"'
    story = [sys.executable, "-m", "tests.full_disk_story", str(disk), str(tiny_models["5b"])]
    story += [str(reference_dataset), str(tmp_path / "cache"), str(big_zip)]
    completed = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mount, str(disk), *story],
        cwd=REPO,
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.splitlines()[-1])

    assert report["big_zip"].startswith("big.zip unpacks to more than the disk holding")
    assert report["big_zip"].endswith("; free space or use a smaller zip")
    assert report["left_in_datasets"] == []

    between = report["between"]
    assert between["status"] == "failed" and FULL_DISK.match(between["reason"]), between
    assert between["exit_code"] == 1 and between["events_whole"]
    assert 20 < between["failed_at_step"] < 40  # after checkpoint-20, before the next one
    listing = report["list_on_full_disk"]
    assert report["free_while_listing"] < 1024**2 and listing["exit"] == 0, listing["stderr"]
    assert [job["status"] for job in listing["jobs"]] == ["failed"]
    assert FULL_DISK.match(listing["jobs"][0]["reason"])
    assert "the job store cannot be written" in listing["stderr"]
    assert report["checkpoints_before"] == [20]

    at_checkpoint = report["at_checkpoint"]
    assert at_checkpoint["status"] == "failed" and FULL_DISK.match(at_checkpoint["reason"])
    assert at_checkpoint["exit_code"] == 1 and at_checkpoint["events_whole"]
    assert at_checkpoint["failed_at_step"] == 40
    assert report["resumed_from_step"] == 20  # the resume after the first failure
    assert report["checkpoints_after"] == [20]  # the last complete checkpoint is intact
    assert report["left_in_job_folder"] == []  # no half-written checkpoint, no reserve


def test_a_tick_that_saw_the_last_attempt_end_leaves_the_next_alone(tmp_path):
    """A finished attempt's tick looks at the job (the attempt ended with status 1) while the
    page resumes it; by the time the tick records the end, the next attempt runs. The tick must
    not record the old end over the new attempt, nor kill its processes (same marker)."""
    runner = Runner(tmp_path / "workspace")
    job = job_folder(
        runner, "resumed while a tick looks", [ConfigEvent(training_configuration={}, config={})]
    )
    first = run_as_sleeper(runner, job)
    runner.store.update(job.id, attempts=1)
    first.kill()
    first.wait()
    (Path(job.job_dir) / "exit_code").write_text("1\n")
    seen_by_the_tick = runner.store.get(job.id)  # running, attempt 1, its exit status on disk
    runner.reconcile()  # the page records the end...
    runner.store.transition(job.id, ("failed",), status="queued")  # ...and resumes it
    second = run_as_sleeper(runner, job)
    runner.store.update(job.id, attempts=2)
    try:
        runner._reconcile(seen_by_the_tick)  # the tick goes on from what it saw
        assert second.poll() is None, "the next attempt was killed"
        assert runner.store.get(job.id).status == "running"
    finally:
        second.kill()
        second.wait()
