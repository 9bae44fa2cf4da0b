"""The queue says what a job waits for, idle preview workers step aside, and `jobs start` refuses
what cannot run before a job exists. Blockers are sleeping processes posing as jobs: nothing here
trains."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from jobs import queue
from jobs.__main__ import main as jobs_main
from jobs.spec import JobSpec
from jobs.store import Job
from tests.job_folders import run_as_sleeper


def job(job_id: str, kind: str = "train", gpus=(), status: str = "queued", name=None) -> Job:
    return Job(
        id=job_id,
        name=name or job_id,
        kind=kind,
        status=status,
        gpu_ids=list(gpus),
        job_dir=f"/nowhere/{job_id}",
        created=0.0,
    )


def test_each_queued_job_names_the_gpus_and_the_job_it_waits_for():
    running = job("A", gpus=[0], status="running", name="big run")
    worker = job("W", kind="infer", gpus=[2], status="running")
    queued = [
        job("B", gpus=[0, 1]),  # GPU 0 is held by A
        job("C", gpus=[1]),  # GPU 1 is free, but B asked for it first
        job("D", gpus=[3]),  # free: starts
        job("E", gpus=[2]),  # the worker is busy with a preview
    ]
    plan = queue.plan(queued, [running, worker], idle=lambda j: False)
    assert [j.id for j in plan.ready] == ["D"]
    assert plan.reasons["B"] == "waiting for GPU 0: the run 'big run' (A) is using it"
    assert plan.reasons["C"] == "waiting for GPU 1: the run 'B' (B) was queued before it"
    assert plan.reasons["E"] == "waiting for GPU 2: the preview worker (W) is making a preview"
    assert plan.step_aside == []


def test_an_idle_preview_worker_steps_aside_for_a_run_but_not_for_another_preview():
    worker = job("W", kind="infer", status="running")
    run, preview = job("R"), job("P", kind="infer")
    plan = queue.plan([run, preview], [worker], idle=lambda j: True)
    assert plan.step_aside == [worker] and plan.ready == []
    assert plan.reasons["R"] == (
        "waiting for the CPU: the preview worker (W) is idle and stepping aside"
    )
    alone = queue.plan([preview], [worker], idle=lambda j: True)
    assert alone.step_aside == []
    # Once asked, it is not asked again; the reason stays true while it goes.
    stopping = job("W", kind="infer", status="stopping")
    again = queue.plan([run], [stopping], idle=lambda j: True)
    assert again.step_aside == [] and "stepping aside" in again.reasons["R"]


def fake_running_job(runner, name: str, kind: str = "train"):
    """A job the runner sees running: its process a sleeper that SIGINT ends."""
    record = runner.store.add(name, kind, [])
    Path(record.job_dir).mkdir(parents=True)
    sleeper = run_as_sleeper(runner, record)
    return runner.store.get(record.id), sleeper


@pytest.fixture
def spec_file(tmp_path, tiny_models, reference_dataset):
    def write(name="second", **train) -> Path:
        settings = {
            "pretrained_model_name_or_path": str(tiny_models["5b"]),
            "data_root": str(reference_dataset),
            "video_resolution_buckets": ["9x32x32"],
            "train_steps": 2,
            **train,
        }
        path = tmp_path / f"{name}.json"
        path.write_text(JobSpec(name=name, train=settings).model_dump_json())
        return path

    return write


def test_a_queued_job_shows_what_it_waits_for_in_jobs_show(runner, spec_file, capsys):
    workspace = str(runner.workspace)
    first, sleeper = fake_running_job(runner, "first")
    try:
        assert jobs_main(["--workspace", workspace, "start", str(spec_file())]) == 0
        job_id = capsys.readouterr().out.strip()
        assert jobs_main(["--workspace", workspace, "show", job_id, "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["status"] == "queued"
        assert record["reason"] == f"waiting for the CPU: the run 'first' ({first.id}) is using it"
        runner.stop(job_id)  # cancelled before the sleeper's end would start it
    finally:
        sleeper.kill()


def test_an_idle_preview_worker_is_stopped_when_a_run_needs_the_cpu(runner, spec_file):
    worker, sleeper = fake_running_job(runner, "preview worker", kind="infer")
    try:
        run = runner.submit(JobSpec.model_validate_json(spec_file().read_text()))
        assert run.status == "queued"
        assert "preview worker" in run.reason and "stepping aside" in run.reason
        assert runner.store.get(worker.id).status == "stopping"
        sleeper.wait(timeout=10)  # the worker took its SIGINT
        runner.poll()
        assert runner.store.get(worker.id).status == "stopped"
        started = runner.store.get(run.id)
        assert started.status == "running" and started.reason is None
    finally:
        sleeper.kill()


def test_a_job_takes_sigint_even_when_the_app_was_started_ignoring_it(runner, spec_file):
    """An app started in the background by a script inherits SIGINT ignored; its jobs must not
    (a stop, and an idle worker stepping aside, begin with SIGINT)."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        run = runner.submit(JobSpec.model_validate_json(spec_file().read_text()))
    finally:
        signal.signal(signal.SIGINT, previous)
    assert run.status == "running"
    status = Path(f"/proc/{run.pid}/status").read_text().splitlines()
    ignored = int(next(line for line in status if line.startswith("SigIgn:")).split()[1], 16)
    assert not ignored & (1 << (signal.SIGINT - 1)) and not ignored & (1 << (signal.SIGTERM - 1))


def test_start_refuses_an_empty_dataset_with_one_sentence_and_creates_no_job(
    runner, spec_file, tiny_models, tmp_path, capsys
):
    empty = tmp_path / "empty dataset"
    empty.mkdir()
    code = jobs_main(
        ["--workspace", str(runner.workspace), "start", str(spec_file(data_root=str(empty)))]
    )
    error = capsys.readouterr().err.strip()
    assert code == 2
    assert error.startswith("error: --data_root: the dataset in") and "is empty" in error
    assert len(error.splitlines()) == 1
    assert runner.store.list() == [] and not runner.store.runs_dir.exists()
    too_long = spec_file(video_resolution_buckets=["49x32x32"])
    assert jobs_main(["--workspace", str(runner.workspace), "start", str(too_long)]) == 2
    assert "nothing in" in capsys.readouterr().err and runner.store.list() == []
    # The base model's own rule, read from its configs: the 1.5 family takes 8k+1 frames.
    wrong_shape = spec_file(
        pretrained_model_name_or_path=str(tiny_models["1.5"]),
        video_resolution_buckets=["13x32x32"],
    )
    assert jobs_main(["--workspace", str(runner.workspace), "start", str(wrong_shape)]) == 2
    error = capsys.readouterr().err
    assert "--video_resolution_buckets: 13x32x32" in error and "8k+1" in error
    assert runner.store.list() == []


def test_a_named_output_dir_is_honoured_and_the_job_folder_points_to_it(
    runner, spec_file, tmp_path
):
    blocker, sleeper = fake_running_job(runner, "first")  # keeps the new job queued
    try:
        output = tmp_path / "my outputs" / "run-1"
        spec = JobSpec.model_validate_json(spec_file(output_dir=str(output)).read_text())
        queued = runner.submit(spec)
        folder = Path(queued.job_dir)
        assert folder.is_symlink() and folder.resolve() == output
        assert runner.spec(queued).train.output_dir == str(output)
        assert (output / "spec.json").is_file()
        with pytest.raises(Exception, match="already holds files"):
            runner.submit(spec)
        # A spec copied from an earlier job names that job's folder: the new job gets its own.
        copied = spec.model_copy(
            update={"train": spec.train.model_copy(update={"output_dir": blocker.job_dir})}
        )
        again = runner.submit(JobSpec.model_validate_json(copied.model_dump_json()))
        assert not Path(again.job_dir).is_symlink()
        assert runner.spec(again).train.output_dir == again.job_dir
        for record in (queued, again):
            runner.stop(record.id)
        runner.delete(queued.id, confirm=True)
        assert not folder.exists() and (output / "spec.json").is_file()  # the user's files stay
    finally:
        sleeper.kill()
