"""A trainer started before Start (jobs/standby.py, core/standby.py): a CPU run begins in a
process whose imports are done, and is then a job like any other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from jobs import standby as standby_trainer
from jobs.processes import LOG_FILE, NO_TICK_FILE, job_env, spawn
from jobs.runner import Runner
from jobs.spec import single_cpu_process_env
from tests.job_folders import kill_active_jobs, run_as_sleeper
from tests.test_jobs import LONG, make_spec, steps_logged, wait_for


def trainer_of(runner: Runner, job) -> psutil.Process:
    trainers = wait_for(lambda: runner._trainers(runner.store.get(job.id)), what="the trainer")
    assert len(trainers) == 1
    return trainers[0]


def test_a_cpu_run_starts_in_the_waiting_standby_and_stops_and_resumes_as_any_job(
    tmp_path, tiny_models, reference_dataset
):
    runner = Runner(tmp_path / "workspace", stop_grace=60, kill_grace=10, standby=True)
    try:
        runner.warm_standby()
        first_standby = runner._standbys.standby
        spec = make_spec(tiny_models, reference_dataset, "warm", train_steps=LONG)
        submitted = time.time()
        job = runner.submit(spec)
        # The job's process is the standby's, started before Start: no fresh interpreter.
        assert job.status == "running" and job.pid == first_standby.process.pid
        trainer = trainer_of(runner, job)
        assert trainer.create_time() < submitted
        wait_for(lambda: steps_logged(job), timeout=180, what="a first step")
        assert trainer.cwd() == job.job_dir
        log = (Path(job.job_dir) / LOG_FILE).read_text()
        assert "--config" in log and "Process 1 of 1 on cpu" in log

        # Stopped through its marker, a link to the job folder: its exit status lands there.
        runner.stop(job.id)
        stopped = wait_for(
            lambda: runner.store.get(job.id).finished and runner.store.get(job.id),
            timeout=120,
            what="the stop",
        )
        assert stopped.status == "stopped" and stopped.exit_code == 130
        assert (Path(job.job_dir) / "exit_code").read_text().strip() == "130"
        standby_root = runner.workspace / standby_trainer.STANDBY_DIR
        assert not list(standby_root.glob("*.taken"))  # the trainer removed what it left

        # No run is on: the heartbeat keeps a new one waiting, and clears the old link.
        first_standby.process.wait(timeout=30)  # the wrapper, done recording
        runner.poll()
        second_standby = runner._standbys.standby
        assert second_standby is not first_standby and second_standby.waiting()
        assert not first_standby.folder.exists()
        resumed = runner.resume(job.id)
        assert resumed.pid == second_standby.process.pid
        before = max(steps_logged(job))
        wait_for(lambda: max(steps_logged(job)) > before, timeout=180, what="steps after resume")
        runner.stop(job.id)
        wait_for(lambda: runner.store.get(job.id).finished, timeout=120, what="the second stop")
        assert runner.store.get(job.id).exit_code == 130
    finally:
        kill_active_jobs(runner)
        runner.close_standby()


def test_a_run_the_standby_cannot_take_starts_a_fresh_process(tmp_path):
    """A standby that closed itself, or whose environment is not the job's, is passed over;
    the one that fits is handed the job: its folder becomes a link to the job folder and the
    job's arguments wait there for the trainer."""
    runner = Runner(tmp_path / "workspace", standby=True)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    spec = make_spec({"5b": "/models/tiny"}, "/data/clips")
    python = sys.executable
    argv = [python, "-m", "core.train", "--config", str(job_dir / "spec.json")]
    env = job_env(runner.workspace, job_dir, spec.launch_env())
    sleepers = []

    def waiting_standby(env_changes=None) -> standby_trainer.Standby:
        folder = standby_trainer.new_folder(runner.workspace)
        sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
        sleepers.append(sleeper)
        standby_env = job_env(runner.workspace, folder, single_cpu_process_env())
        standby_env.update(env_changes or {})
        runner._standbys.standby = standby_trainer.Standby(sleeper, folder, standby_env)
        return runner._standbys.standby

    try:
        other_precision = waiting_standby({"ACCELERATE_MIXED_PRECISION": "bf16"})
        assert runner._standbys.take(spec, job_dir, argv, env) is None
        assert runner._standbys.standby is other_precision and other_precision.waiting()

        closed = waiting_standby()
        os.rename(closed.folder / "open", closed.folder / "closed")
        assert runner._standbys.take(spec, job_dir, argv, env) is None

        on_a_gpu = make_spec({"5b": "/models/tiny"}, "/data/clips", gpu_ids=[0])
        fitting = waiting_standby()
        assert runner._standbys.take(on_a_gpu, job_dir, argv, env) is None
        assert runner._standbys.take(spec, job_dir, argv, env) is fitting.process
        assert runner._standbys.standby is None
        assert fitting.folder.is_symlink() and fitting.folder.resolve() == job_dir.resolve()
        handed = fitting.folder.with_name(f"{fitting.folder.name}.taken") / "job.json"
        assert json.loads(handed.read_text()) == {
            "job_dir": str(job_dir),
            "argv": ["--config", str(job_dir / "spec.json")],
        }
    finally:
        for sleeper in sleepers:
            sleeper.kill()
            sleeper.wait()


def test_a_standby_closes_itself_when_its_app_is_gone(tmp_path, subprocess_env):
    """Even while it still imports: no process outlives its app for long, nothing is
    recorded and no folder is left."""
    runner = Runner(tmp_path / "workspace", standby=True)
    app = subprocess.Popen(["sleep", "60"])
    folder = standby_trainer.new_folder(runner.workspace)
    env = job_env(runner.workspace, folder, single_cpu_process_env())
    env["PATH"] = subprocess_env["PATH"]
    with open(tmp_path / "standby.log", "wb") as log:
        standby = spawn(standby_trainer.standby_argv(sys.executable, app.pid), folder, env, log)
    time.sleep(0.5)
    app.kill()
    app.wait()
    assert standby.wait(timeout=60) == 0, (tmp_path / "standby.log").read_text()
    assert not folder.exists()


def test_the_app_keeps_a_standby_unless_told_not_to(tmp_path):
    from app import parse_args
    from ui.studio import Studio

    assert parse_args([]).standby and not parse_args(["--no-standby"]).standby
    studio = Studio(tmp_path / "workspace", standby=False)
    studio.warm_standby()
    assert studio.runner._standbys is None
    assert not (studio.workspace / standby_trainer.STANDBY_DIR).exists()


def test_an_idle_preview_worker_steps_aside_for_a_run_that_starts_in_the_standby(tmp_path):
    """Start while the preview worker is idle: the app stops the worker and waits for it
    itself (its tick held back), so the run starts in the standby, not in a fresh process."""
    runner = Runner(tmp_path / "workspace", stop_grace=60, kill_grace=10, standby=True)
    worker = runner.store.add("preview worker", "infer", [])
    Path(worker.job_dir).mkdir(parents=True)
    sleeper = run_as_sleeper(runner, worker)  # an idle worker holding the CPU
    try:
        runner.warm_standby()
        standby = runner._standbys.standby
        job = runner.submit(make_spec({"5b": "/models/tiny"}, "/data/clips", train_steps=LONG))
        assert job.status == "running" and job.pid == standby.process.pid
        assert sleeper.poll() is not None  # it stepped aside before the run started
        assert runner.store.get(worker.id).finished
        assert not (Path(worker.job_dir) / NO_TICK_FILE).exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        kill_active_jobs(runner)


def test_a_standby_that_ended_untaken_is_made_again_only_when_asked(tmp_path, monkeypatch, caplog):
    """One that waited too long frees its memory for good; one that failed says why, once,
    instead of being started again at every heartbeat."""
    runner = Runner(tmp_path / "workspace", standby=True)
    monkeypatch.setattr(standby_trainer, "IDLE_TIMEOUT", 0.1)
    try:
        runner.warm_standby()
        idle = runner._standbys.standby
        assert idle.process.wait(timeout=60) == 0  # closed itself while importing
        runner.poll()
        assert runner._standbys.standby is None and not idle.folder.exists()

        monkeypatch.setattr(
            standby_trainer,
            "standby_argv",
            lambda python, owner: [python, "-c", "raise SystemExit('no torch here')"],
        )
        runner.warm_standby()
        failing = runner._standbys.standby
        failing.process.wait(timeout=60)
        runner.poll()
        runner.poll()
        assert runner._standbys.standby is None
        warnings = [r.getMessage() for r in caplog.records if "kept ready" in r.getMessage()]
        assert warnings == [
            "the trainer kept ready for CPU runs ended with exit status 1 (no torch here); "
            "runs start in a fresh process"
        ]
    finally:
        runner.close_standby()


def test_on_a_file_system_without_links_the_run_starts_in_a_fresh_process(tmp_path, monkeypatch):
    runner = Runner(tmp_path / "workspace", standby=True)
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    spec = make_spec({"5b": "/models/tiny"}, "/data/clips")
    argv = [sys.executable, "-m", "core.train", "--config", str(job_dir / "spec.json")]
    env = job_env(runner.workspace, job_dir, spec.launch_env())
    folder = standby_trainer.new_folder(runner.workspace)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    standby_env = job_env(runner.workspace, folder, single_cpu_process_env())
    runner._standbys.standby = standby_trainer.Standby(sleeper, folder, standby_env)

    def no_links(*_):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_links)
    try:
        assert runner._standbys.take(spec, job_dir, argv, env) is None
        assert sleeper.poll() is not None  # the claimed standby is ended, not left waiting
        assert not folder.exists() and not list(folder.parent.iterdir())
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()
