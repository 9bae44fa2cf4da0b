"""The jobs layer with real tiny training subprocesses: nobody loses a run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from core.events import read_events
from jobs.__main__ import main as jobs_main
from jobs.events import EventTail
from jobs.runner import JobError, Runner
from jobs.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]
LONG = 100_000  # steps of a run that only ends when a test ends it


def make_spec(models, dataset, name="run", gpu_ids=(), **train) -> JobSpec:
    settings = {
        "pretrained_model_name_or_path": str(models["5b"]),
        "data_root": str(dataset),
        "video_resolution_buckets": ["9x32x32"],
        "precompute_conditions": True,
        "train_steps": 6,
        "checkpointing_steps": 1000,
        "seed": 0,
        "rank": 4,
        "lora_alpha": 4,
        **train,
    }
    return JobSpec(name=name, gpu_ids=list(gpu_ids), train=settings)


def wait_for(check, timeout=120.0, interval=0.1, what="the condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def steps_logged(job) -> list[int]:
    path = Path(job.job_dir) / "events.jsonl"
    if not path.exists():
        return []
    return [e.step for e in read_events(path) if e.kind == "step"]


def test_the_queue_advances_with_nobody_polling_and_disjoint_gpus_run_together(
    runner, tiny_models, reference_dataset
):
    """After submitting, nobody polls: each finished job's own tick records it and starts
    what waited for its GPU (headless, no app, no CLI command)."""
    first = runner.submit(make_spec(tiny_models, reference_dataset, "first", [0], train_steps=40))
    second = runner.submit(make_spec(tiny_models, reference_dataset, "second", [1]))
    waiting = runner.submit(make_spec(tiny_models, reference_dataset, "third", [0]))
    assert first.status == "running" and second.status == "running"
    assert waiting.status == "queued"
    seen = {waiting.status}

    def waiting_has_finished():
        job = runner.store.get(waiting.id)  # reads the store; never reconciles or schedules
        seen.add(job.status)
        if runner.store.get(first.id).status == "running":
            assert job.status == "queued", "a job started on a GPU another job holds"
        return job.finished

    wait_for(waiting_has_finished, timeout=240, what="the queued job to run and finish")
    assert {"queued", "running", "succeeded"} <= seen
    for job_id in (first.id, second.id, waiting.id):
        job = runner.store.get(job_id)
        assert job.status == "succeeded", job.reason
        assert job.exit_code == 0 and job.last_step == job.total_steps
        assert (Path(job.job_dir) / "pytorch_lora_weights.safetensors").is_file()
        assert read_events(Path(job.job_dir) / "events.jsonl")[-1].kind == "done"
    # The two jobs on disjoint GPUs overlapped in time; the waiting one started after the first.
    a, b, c = (runner.store.get(j) for j in (first.id, second.id, waiting.id))
    assert b.started < a.ended and a.started < b.ended
    assert c.started >= a.ended - 1.0


def test_the_run_outlives_the_app_that_started_it(tiny_models, reference_dataset, tmp_path):
    """An app killed with SIGKILL mid-run: a fresh process sees the run, and it finishes."""
    workspace = tmp_path / "workspace"
    spec = make_spec(tiny_models, reference_dataset, train_steps=400)
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(spec.model_dump_json())
    app = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from jobs.runner import Runner\nfrom jobs.spec import JobSpec\n"
            f"runner = Runner({str(workspace)!r})\n"
            f"job = runner.submit(JobSpec.model_validate_json(open({str(spec_path)!r}).read()))\n"
            "print(job.id, flush=True)\ntime.sleep(600)\n",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    job_id = app.stdout.readline().strip()
    fresh = Runner(workspace)
    wait_for(lambda: steps_logged(fresh.store.get(job_id)), what="the first step")
    app.send_signal(signal.SIGKILL)
    app.wait(timeout=10)

    another = Runner(workspace)
    another.poll()
    assert another.store.get(job_id).status == "running"
    job = another.wait(job_id, timeout=900)  # a cap: 400 steps take minutes on a busy CPU
    assert job.status == "succeeded", job.reason
    assert job.last_step == 400


def test_kill_9_fails_with_a_reason_and_a_lone_sigterm_stops_with_143(
    runner, tiny_models, reference_dataset
):
    job = runner.submit(
        make_spec(tiny_models, reference_dataset, train_steps=LONG, checkpointing_steps=2)
    )
    wait_for(lambda: steps_logged(job), what="the first step")
    trainers = runner._trainers(runner.store.get(job.id))
    assert len(trainers) == 1
    trainers[0].send_signal(signal.SIGKILL)
    job = runner.wait(job.id, timeout=60)
    assert job.status == "failed"
    assert "killed (SIGKILL)" in job.reason and job.suggestion

    # A SIGTERM to the trainer alone (not through Stop): it checkpoints and stops, and the
    # trainer's own status is recorded, not the 1 accelerate's launcher turns it into.
    runner.resume(job.id)

    def resumed_and_stepping():
        current = runner.store.get(job.id)
        tail = EventTail(Path(current.job_dir) / "events.jsonl", current.attempt_offset)
        return current.status == "running" and any(e.kind == "step" for e in tail.read_new())

    wait_for(resumed_and_stepping, what="a step of the resumed run")
    runner._trainers(runner.store.get(job.id))[0].send_signal(signal.SIGTERM)
    job = runner.wait(job.id, timeout=60)
    assert job.status == "stopped" and job.exit_code == 128 + signal.SIGTERM
    checkpoint = f"checkpoint-{job.last_step}"
    assert job.reason == f"stopped at step {job.last_step}; resume continues from {checkpoint}"
    assert (Path(job.job_dir) / checkpoint / "checkpoint.json").is_file()


def test_out_of_memory_fails_with_the_reason_and_a_suggestion(
    runner, tiny_models, reference_dataset, monkeypatch
):
    monkeypatch.setenv("COGVIDEOX_STUDIO_FAULT", "oom")
    job = runner.submit(make_spec(tiny_models, reference_dataset))
    job = runner.wait(job.id, timeout=120)
    assert job.status == "failed"
    assert job.reason.startswith("out of memory")
    assert "--layerwise_upcasting_modules transformer" in job.suggestion
    assert "--use_8bit_bnb" in job.suggestion


def test_killed_while_checkpointing_the_previous_checkpoint_still_resumes(
    runner, tiny_models, reference_dataset, monkeypatch
):
    monkeypatch.setenv("COGVIDEOX_STUDIO_FAULT", "kill_in_checkpoint:4")
    job = runner.submit(
        make_spec(tiny_models, reference_dataset, train_steps=6, checkpointing_steps=2)
    )
    job = runner.wait(job.id, timeout=120)
    assert job.status == "failed" and "SIGKILL" in job.reason
    job_dir = Path(job.job_dir)
    assert (job_dir / "checkpoint-2" / "checkpoint.json").is_file()
    assert not (job_dir / "checkpoint-4").exists()

    monkeypatch.delenv("COGVIDEOX_STUDIO_FAULT")
    runner.resume(job.id)
    job = runner.wait(job.id, timeout=120)
    assert job.status == "succeeded", job.reason
    configs = [e for e in read_events(job_dir / "events.jsonl") if e.kind == "config"]
    assert configs[-1].resumed_from_step == 2


def test_stop_checkpoints_and_resume_continues_the_same_curve(
    runner, tiny_models, reference_dataset
):
    job = runner.submit(make_spec(tiny_models, reference_dataset, train_steps=LONG))
    wait_for(lambda: len(steps_logged(job)) >= 5, what="five steps")
    runner.stop(job.id)
    assert runner.store.get(job.id).status == "stopping"
    job = runner.wait(job.id, timeout=60)
    assert job.status == "stopped", job.reason
    stopped_at = job.last_step
    assert (Path(job.job_dir) / f"checkpoint-{stopped_at}" / "checkpoint.json").is_file()
    assert f"resume continues from checkpoint-{stopped_at}" in job.reason

    # The same job continues: a shorter total makes it finish soon after.
    spec_path = Path(job.job_dir) / "spec.json"
    spec = json.loads(spec_path.read_text())
    spec["train"]["train_steps"] = stopped_at + 5
    spec_path.write_text(json.dumps(spec))
    runner.resume(job.id)
    job = runner.wait(job.id, timeout=120)
    assert job.status == "succeeded", job.reason
    assert steps_logged(job) == list(range(1, stopped_at + 6))
    assert job.attempts == 2


def test_stop_twice_and_cancel_and_delete_ask_for_what_they_need(
    runner, tiny_models, reference_dataset
):
    running = runner.submit(make_spec(tiny_models, reference_dataset, "long", train_steps=LONG))
    queued = runner.submit(make_spec(tiny_models, reference_dataset, "waits"))
    assert queued.status == "queued"
    assert runner.stop(queued.id).status == "stopped"
    assert runner.store.get(queued.id).reason == "cancelled before it started"
    runner.stop(running.id)
    runner.stop(running.id)  # a second press changes nothing
    job = runner.wait(running.id, timeout=90)
    assert job.status == "stopped"
    with pytest.raises(JobError, match="has already ended"):
        runner.stop(job.id)
    with pytest.raises(JobError, match="confirm"):
        runner.delete(job.id)
    runner.delete(job.id, confirm=True)
    assert runner.store.get(job.id) is None and not Path(job.job_dir).exists()


def test_a_recycled_pid_is_not_taken_for_the_job(runner, tiny_models, reference_dataset):
    job = runner.store.add("ghost", "train", [])
    Path(job.job_dir).mkdir(parents=True)
    # Our own pid is alive, but it was not started at the time the record says.
    runner.store.update(
        job.id,
        status="running",
        pid=os.getpid(),
        pgid=os.getpgid(0),
        proc_start=psutil.Process().create_time() - 1000,
        started=time.time(),
    )
    runner.store.update(job.id, pgid=999_999)
    runner.reconcile()
    job = runner.store.get(job.id)
    assert job.status == "interrupted" and "without a final report" in job.reason


def test_cli_start_show_list_and_the_same_run_twice(
    tiny_models, reference_dataset, tmp_path, busy_cpu, capsys
):
    """`start` queues (the CPU is busy), `show` and `list` read the record, the same run is not
    started twice unless asked, a second stop is one sentence, and so is a bad spec."""
    workspace = str(tmp_path / "workspace")
    busy_cpu(Runner(workspace))
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(make_spec(tiny_models, reference_dataset, "cli").model_dump_json())
    start = ["--workspace", workspace, "start", str(spec_path)]
    assert jobs_main(start) == 0
    job_id = capsys.readouterr().out.strip()
    assert jobs_main(["--workspace", workspace, "show", job_id, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert {"status", "pid", "exit_code", "reason", "last_step", "job_dir"} <= set(record)
    assert record["status"] == "queued" and Path(record["job_dir"], "spec.json").is_file()
    assert jobs_main(["--workspace", workspace, "list", "--json"]) == 0
    assert job_id in [r["id"] for r in json.loads(capsys.readouterr().out)]

    assert jobs_main(start) == 2
    assert capsys.readouterr().err == (
        f"error: the same run is already queued as {job_id}; it is not started twice "
        "(pass --again to start another)\n"
    )
    assert jobs_main([*start, "--again"]) == 0
    again = capsys.readouterr().out.strip()
    assert again != job_id and Runner(workspace).store.get(again).status == "queued"

    stop = ["--workspace", workspace, "stop", job_id]
    assert jobs_main(stop) == 0 and "cancelled before it started" in capsys.readouterr().out
    assert jobs_main(stop) == 2
    assert capsys.readouterr().err == f"error: job {job_id} has already ended (stopped)\n"

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"lr": -1}}))
    assert jobs_main(["--workspace", workspace, "start", str(bad)]) == 2
    assert "--lr" in capsys.readouterr().err
