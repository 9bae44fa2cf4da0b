"""Two training processes on the CPU (gloo): the same run as one process with twice the batch."""

from __future__ import annotations

import importlib.util
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.events import read_events
from jobs.launch_choice import config_path
from jobs.spec import JobSpec, LaunchSettings

# Adam with an epsilon far above every gradient (|g| <= ~0.02 here) is SGD with momentum at
# lr/epsilon: the update m/(sqrt(v) + eps) changes by at most 1/eps = 1 times a change in the
# gradient, so rounding is never amplified. With the default epsilon (1e-8), Adam divides each
# gradient by its own size: an element whose gradient is a near-cancellation of larger terms
# carries a large relative rounding error, and Adam turned that into a 2e-5 weight difference
# between two runs that computed the same mean gradient (once in 128 elements, on a fresh clone).
TRAIN = {
    "video_resolution_buckets": ["9x32x32"],
    "precompute_conditions": True,
    "train_steps": 4,
    "checkpointing_steps": 1000,
    "seed": 5,
    "rank": 4,
    "lora_alpha": 4,
    "lr": 1.0,
    "epsilon": 1.0,
    "transformer_dtype": "fp32",
    "optimizer": "adamw",
}
# fp32's unit roundoff, and the longest sum the tiny model's forward and backward reduce over
# (attention over its 226 text tokens plus the clip's 8 video tokens, rounded up to 256 terms):
# two runs that sum the same terms in another order (one batch of 2 against two ranks of 1 and an
# all-reduce) differ by at most about n * u of the largest term. The LoRA is compared element by
# element against that fraction of its largest weight; the runs actually differ by ~10 u.
UNIT_ROUNDOFF = 2.0**-24
SAME_SUM_TOLERANCE = 256 * UNIT_ROUNDOFF  # 1.5e-5


# One precompute cache for every run here: the encoders' float rounding depends on the thread
# count, and runs compared to each other must train on the very same latents.
CACHE = {}


@pytest.fixture(scope="module", autouse=True)
def shared_cache(tmp_path_factory):
    CACHE["cache_dir"] = str(tmp_path_factory.mktemp("cache"))
    yield
    CACHE.clear()


def spec(models, dataset, processes: int, batch: int, **train) -> JobSpec:
    settings = {
        "pretrained_model_name_or_path": str(models["5b"]),
        "data_root": str(dataset),
        **TRAIN,
        **CACHE,
        "batch_size": batch,
        **train,
    }
    return JobSpec(
        name=f"{processes}x{batch}", train=settings, launch=LaunchSettings(num_processes=processes)
    )


@pytest.fixture(scope="module")
def one_process_lora(tiny_models, reference_dataset, tmp_path_factory) -> dict:
    """The LoRA of one process with batch 2: what two ranks with batch 1 must reproduce."""
    from jobs.runner import Runner

    runner = Runner(tmp_path_factory.mktemp("workspace"))
    one = runner.submit(spec(tiny_models, reference_dataset, processes=1, batch=2))
    one = runner.wait(one.id, timeout=180)
    assert one.status == "succeeded", one.reason
    return load_file(Path(one.job_dir) / "pytorch_lora_weights.safetensors")


def assert_same_lora(job, expected: dict, tolerance: float = SAME_SUM_TOLERANCE) -> None:
    """Every weight equal to `tolerance` of its tensor's largest weight, and the LoRA trained:
    lora_B starts at zero, so what it holds is the training, and it must dwarf the tolerance."""
    lora = load_file(Path(job.job_dir) / "pytorch_lora_weights.safetensors")
    assert lora.keys() == expected.keys()
    for key in expected:
        scale = float(expected[key].abs().max())
        torch.testing.assert_close(lora[key], expected[key], rtol=0, atol=tolerance * scale)
        if "lora_B" in key:
            assert scale > 1e-3, f"{key} barely trained ({scale:.1e}): the comparison is empty"


def test_two_ranks_train_the_same_lora_as_one_process_with_twice_the_batch(
    runner, tiny_models, reference_dataset, one_process_lora
):
    two = runner.submit(spec(tiny_models, reference_dataset, processes=2, batch=1))
    two = runner.wait(two.id, timeout=180)
    assert two.status == "succeeded", two.reason
    log = (Path(two.job_dir) / "train.log").read_text()
    assert "Process 1 of 2" in log and "Process 2 of 2" in log
    events = read_events(Path(two.job_dir) / "events.jsonl")
    assert [e.step for e in events if e.kind == "step"] == [1, 2, 3, 4]  # the main rank only
    config = next(e for e in events if e.kind == "config").training_configuration
    assert config["train batch size"] == 2 and config["batches per device"] == 1
    assert_same_lora(two, one_process_lora)


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


def wait_for_attempt_steps(runner, job, count: int, timeout: float = 120.0) -> None:
    """Until the job's current attempt has reported `count` steps."""
    from jobs.events import EventTail

    deadline = time.monotonic() + timeout
    while True:
        runner.poll()
        current = runner.store.get(job.id)
        tail = EventTail(Path(current.job_dir) / "events.jsonl", current.attempt_offset)
        steps = sum(event.kind == "step" for event in tail.read_new())
        if current.status == "running" and steps >= count:
            return
        assert time.monotonic() < deadline, "no steps"
        time.sleep(0.2)


def kill_rank(runner, job, rank: int) -> list:
    """SIGKILL one rank (found by its RANK); returns every trainer process of the job."""
    trainers = runner._trainers(runner.store.get(job.id))
    assert len(trainers) == 2
    by_rank = {int(p.environ()["RANK"]): p for p in trainers}
    by_rank[rank].send_signal(signal.SIGKILL)
    return trainers


def test_a_killed_rank_fails_the_job_naming_it_and_the_others_exit(
    runner, tiny_models, reference_dataset
):
    """The survivors fail too (their collective loses its peer); the reason names the rank
    that was killed and the signal, whichever rank it was, and the job resumes."""
    job = runner.submit(spec(tiny_models, reference_dataset, 2, 1, train_steps=100_000))
    for rank in (1, 0):
        wait_for_attempt_steps(runner, job, 2)
        trainers = kill_rank(runner, job, rank)
        job = runner.wait(job.id, timeout=120)
        assert job.status == "failed", job.status
        assert job.reason == f"rank {rank} was killed by SIGKILL; the other ranks stopped with it"
        assert not any(p.is_running() and p.status() != "zombie" for p in trainers)
        assert not runner._job_processes(job), "a process of the job outlived it"
        if rank == 1:
            runner.resume(job.id)


# DeepSpeed runs on its CPU accelerator over gloo (slowly): enough to prove the trainer drives
# ZeRO correctly before any GPU is rented. FSDP has no CPU path in accelerate.
needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="DeepSpeed is not installed (make test installs it from requirements-gpu.txt)",
)


def deepspeed_spec(models, dataset, config: str, **train) -> JobSpec:
    job = spec(models, dataset, processes=2, batch=1, **train)
    # fp32 throughout (the configs' bf16 would make DeepSpeed cast the model), to compare.
    launch = LaunchSettings(
        num_processes=2, config_file=str(config_path(config)), mixed_precision="no"
    )
    return job.model_copy(update={"name": config, "launch": launch})


@needs_deepspeed
def test_deepspeed_zero2_on_two_cpu_ranks_trains_the_one_process_lora(
    runner, tiny_models, reference_dataset, one_process_lora
):
    job = runner.submit(deepspeed_spec(tiny_models, reference_dataset, "deepspeed_zero2"))
    job = runner.wait(job.id, timeout=300)
    assert job.status == "succeeded", job.reason
    log = (Path(job.job_dir) / "train.log").read_text()
    assert "Process 1 of 2" in log and "Process 2 of 2" in log
    assert "DeepSpeed Model and Optimizer saved" in log or "DeepSpeed" in log
    assert_same_lora(job, one_process_lora)


@needs_deepspeed
def test_deepspeed_zero3_gathers_shards_to_validate_checkpoint_and_resume(
    runner, tiny_models, reference_dataset
):
    """ZeRO-3 holds a shard of every weight per rank: the LoRA file, the checkpoint and the
    validation video all need the ranks to gather together."""
    first = runner.submit(
        deepspeed_spec(
            tiny_models,
            reference_dataset,
            "deepspeed_zero3",
            train_steps=3,
            checkpointing_steps=2,
            validation_prompts=["a square"],
            validation_inference_steps=2,
        )
    )
    first = runner.wait(first.id, timeout=300)
    assert first.status == "succeeded", first.reason
    folder = Path(first.job_dir)
    events = read_events(folder / "events.jsonl")
    validation = next(e for e in events if e.kind == "validation")
    assert len(validation.files) == 1 and (folder / validation.files[0]).stat().st_size > 0
    lora = load_file(folder / "pytorch_lora_weights.safetensors")
    assert len(lora) == 16  # lora_A and lora_B of to_q, to_k, to_v, to_out.0 in both blocks
    assert all(t.numel() > 0 for t in lora.values()), "a rank's empty shard was saved"
    assert sum(float(t.abs().sum()) for k, t in lora.items() if "lora_B" in k) > 0
    assert (folder / "checkpoint-2" / "pytorch_lora_weights.safetensors").is_file()

    resumed = runner.submit(
        deepspeed_spec(
            tiny_models,
            reference_dataset,
            "deepspeed_zero3",
            train_steps=4,
            resume_from_checkpoint=str(folder / "checkpoint-2"),
        )
    )
    resumed = runner.wait(resumed.id, timeout=300)
    assert resumed.status == "succeeded", resumed.reason
    events = read_events(Path(resumed.job_dir) / "events.jsonl")
    assert next(e for e in events if e.kind == "config").resumed_from_step == 2
    assert [e.step for e in events if e.kind == "step"] == [3, 4]
