"""Two training processes on the CPU (gloo): the same run as one process with twice the batch."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from core.events import read_events
from jobs.spec import JobSpec, LaunchSettings

TRAIN = {
    "video_resolution_buckets": ["9x32x32"],
    "precompute_conditions": True,
    "train_steps": 4,
    "checkpointing_steps": 1000,
    "seed": 5,
    "rank": 4,
    "lora_alpha": 4,
    "lr": 1e-2,
    "transformer_dtype": "fp32",
    "optimizer": "adamw",
}


def spec(models, dataset, processes: int, batch: int, **train) -> JobSpec:
    settings = {
        "pretrained_model_name_or_path": str(models["5b"]),
        "data_root": str(dataset),
        **TRAIN,
        "batch_size": batch,
        **train,
    }
    return JobSpec(
        name=f"{processes}x{batch}", train=settings, launch=LaunchSettings(num_processes=processes)
    )


def test_two_ranks_train_the_same_lora_as_one_process_with_twice_the_batch(
    runner, tiny_models, reference_dataset
):
    two = runner.submit(spec(tiny_models, reference_dataset, processes=2, batch=1))
    two = runner.wait(two.id, timeout=180)
    one = runner.submit(spec(tiny_models, reference_dataset, processes=1, batch=2))
    one = runner.wait(one.id, timeout=180)
    assert two.status == one.status == "succeeded", (two.reason, one.reason)
    log = (Path(two.job_dir) / "train.log").read_text()
    assert "Process 1 of 2" in log and "Process 2 of 2" in log
    events = read_events(Path(two.job_dir) / "events.jsonl")
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3, 4]  # the main rank only
    config = next(e for e in events if e.kind == "config").training_configuration
    assert config["train batch size"] == 2 and config["batches per device"] == 1
    lora_two = load_file(Path(two.job_dir) / "pytorch_lora_weights.safetensors")
    lora_one = load_file(Path(one.job_dir) / "pytorch_lora_weights.safetensors")
    assert lora_two.keys() == lora_one.keys()
    for key in lora_one:
        torch.testing.assert_close(lora_two[key], lora_one[key], rtol=1e-4, atol=1e-5)


def wait_for_steps(runner, job, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while runner.store.get(job.id).last_step < count:
        assert time.monotonic() < deadline, "no steps"
        runner.poll()
        time.sleep(0.2)


def test_stop_and_resume_under_two_processes(runner, tiny_models, reference_dataset):
    job = runner.submit(spec(tiny_models, reference_dataset, 2, 1, train_steps=100_000))
    wait_for_steps(runner, job, 3)
    runner.stop(job.id)
    job = runner.wait(job.id, timeout=90)
    assert job.status == "stopped", job.reason
    stopped_at = job.last_step
    spec_path = Path(job.job_dir) / "spec.json"
    saved = JobSpec.model_validate_json(spec_path.read_text())
    train = saved.train.model_copy(update={"train_steps": stopped_at + 3})
    spec_path.write_text(saved.model_copy(update={"train": train}).model_dump_json())
    runner.resume(job.id)
    job = runner.wait(job.id, timeout=180)
    assert job.status == "succeeded", job.reason
    steps = [e.step for e in read_events(Path(job.job_dir) / "events.jsonl") if e.kind == "step"]
    assert steps == list(range(1, stopped_at + 4))


def test_one_rank_killed_fails_the_job_and_the_others_exit(runner, tiny_models, reference_dataset):
    job = runner.submit(spec(tiny_models, reference_dataset, 2, 1, train_steps=100_000))
    wait_for_steps(runner, job, 2)
    trainers = runner._trainers(runner.store.get(job.id))
    assert len(trainers) == 2
    ranks = sorted(trainers, key=lambda p: p.create_time())
    ranks[-1].send_signal(signal.SIGKILL)
    job = runner.wait(job.id, timeout=120)
    assert job.status == "failed", job.status
    assert job.reason
    assert not any(p.is_running() and p.status() != "zombie" for p in trainers)
    assert not runner._job_processes(job), "a process of the job outlived it"
