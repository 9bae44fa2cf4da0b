"""Job folders written as runs leave them, and a job that holds the CPU: the jobs layer tested
as data, with no trainer started."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import psutil

from core.events import ConfigEvent, EventWriter
from jobs.runner import Runner, default_stop_signals
from jobs.spec import JobSpec
from jobs.store import ACTIVE

TRAIN = {"pretrained_model_name_or_path": "/models/tiny", "data_root": "/data/clips"}


def job_folder(runner: Runner, name: str, events=(), exit_code: int | None = None):
    """A job folder as a run leaves it: its spec, its events and its recorded exit status."""
    job = runner.store.add(name, "train", [])
    folder = Path(job.job_dir)
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(JobSpec(name=name, train=TRAIN).model_dump_json())
    writer = EventWriter(folder)
    for event in events:
        writer.emit(event)
    writer.close()
    if exit_code is not None:
        (folder / "exit_code").write_text(f"{exit_code}\n")
    return job


def hold_the_cpu(runner: Runner) -> subprocess.Popen:
    """A running job (a sleeping process with the job's marker) holding the CPU, so that
    nothing queued on it starts. The caller kills the process."""
    started = ConfigEvent(training_configuration={}, config={})
    return run_as_sleeper(runner, job_folder(runner, "holds the cpu", [started]))


def run_as_sleeper(runner: Runner, job) -> subprocess.Popen:
    """Mark a job running, its process a sleeper with the job's marker (SIGINT or SIGTERM end
    it, as a stop would). The caller kills the process."""
    process = subprocess.Popen(
        ["sleep", "600"],
        env={"COGVIDEOX_JOB_DIR": job.job_dir},
        start_new_session=True,
        preexec_fn=default_stop_signals,  # as the runner starts a job
    )
    runner.store.update(
        job.id,
        status="running",
        pid=process.pid,
        pgid=process.pid,
        proc_start=psutil.Process(process.pid).create_time(),
    )
    return process


def kill_active_jobs(runner: Runner) -> None:
    """Jobs outlive the app by design; none may outlive the test that started it (nor a
    trainer waiting for one)."""
    for job in runner.store.list(ACTIVE):
        runner._signal_group(job, signal.SIGKILL)
    runner.close_standby()
