"""The accelerate configs the app offers parse, and say when to choose them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file

from jobs.spec import JobSpec, LaunchSettings

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "assets" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_each_config_parses_and_explains_itself(path):
    config = load_config_from_file(str(path))
    assert config.num_machines == 1 and config.num_processes >= 1
    assert path.read_text().startswith("# "), "the first line says when to choose it"
    spec = JobSpec(gpu_ids=[0, 1], train={}, launch=LaunchSettings(config_file=str(path)))
    argv = spec.to_argv("spec.json")
    assert argv[argv.index("--config_file") + 1] == str(path)
    assert "--num_processes" in argv and argv[argv.index("--num_processes") + 1] == "2"


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if "deepspeed" in p.stem or "fsdp" in p.stem], ids=lambda p: p.stem
)
def test_sharded_backends_train_a_full_finetune_on_two_gpus(
    path, tiny_models, reference_dataset, tmp_path
):
    if torch.cuda.device_count() < 2:
        pytest.skip(
            f"{path.stem} shards a model over NCCL and needs two CUDA GPUs; this machine "
            f"has {torch.cuda.device_count()}"
        )
    if "deepspeed" in path.stem:
        pytest.importorskip("deepspeed", reason="install requirements-gpu.txt for DeepSpeed")
    from jobs.runner import Runner

    runner = Runner(tmp_path / "workspace")
    job = runner.submit(
        JobSpec(
            name=path.stem,
            gpu_ids=[0, 1],
            launch=LaunchSettings(config_file=str(path)),
            train={
                "pretrained_model_name_or_path": str(tiny_models["5b"]),
                "data_root": str(reference_dataset),
                "video_resolution_buckets": ["9x32x32"],
                "training_type": "full-finetune",
                "train_steps": 2,
                "checkpointing_steps": 1,
                "precompute_conditions": True,
            },
        )
    )
    job = runner.wait(job.id, timeout=600)
    assert job.status == "succeeded", job.reason
