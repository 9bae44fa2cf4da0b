"""Options of the reference's command line that change how a run trains or what it writes."""

from __future__ import annotations

import pytest

from core.config import parse_args
from core.events import read_events
from core.train import Trainer


@pytest.fixture(scope="module")
def fp8_run(tiny_models, reference_dataset, tmp_path_factory):
    """fp8 weight storage, accumulation, validation and tensorboard in one short run."""
    out = tmp_path_factory.mktemp("options")
    config = parse_args(
        [
            "--pretrained_model_name_or_path",
            str(tiny_models["5b"]),
            "--data_root",
            str(reference_dataset),
            "--video_resolution_buckets",
            "9x32x32",
            "--output_dir",
            str(out),
            "--train_steps",
            "3",
            "--gradient_accumulation_steps",
            "2",
            "--layerwise_upcasting_modules",
            "transformer",
            "--report_to",
            "tensorboard",
            "--validation_prompts",
            "a red square:::a blue square",
            "--validation_steps",
            "2",
            "--validation_inference_steps",
            "2",
            "--seed",
            "1",
        ]
    )
    trainer = Trainer(config)
    assert trainer.run() == 0
    return trainer, out, read_events(out / "events.jsonl")


def test_fp8_storage_keeps_frozen_weights_in_float8(fp8_run):
    import torch

    trainer, _, _ = fp8_run
    transformer = trainer.accelerator.unwrap_model(trainer.transformer)
    to_q = transformer.transformer_blocks[0].attn1.to_q
    assert to_q.base_layer.weight.dtype == torch.float8_e4m3fn
    assert to_q.lora_A["default"].weight.dtype == torch.float32


def test_train_steps_count_optimizer_steps_under_accumulation(fp8_run):
    _, _, events = fp8_run
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == [1, 2, 3]
    assert all(e.samples_per_second > 0 and e.eta_seconds >= 0 for e in steps)
    config = next(e for e in events if e.kind == "config").training_configuration
    assert config["gradient accumulation steps"] == 2 and config["train batch size"] == 2
    # 3 optimizer steps x 2 micro-batches = 6 clips of 4: the run crossed into epoch 2.
    assert steps[-1].epoch == 2


def test_validation_writes_one_mp4_per_prompt_and_names_them(fp8_run):
    from core.data.video import probe

    _, out, events = fp8_run
    validations = [e for e in events if e.kind == "validation"]
    assert [e.step for e in validations] == [2, 3]
    for event in validations:
        assert len(event.files) == 2
        for name in event.files:
            assert name.startswith(f"validation/step-{event.step}/") and name.endswith(".mp4")
            info = probe(out / name)
            assert (info.frames, info.height, info.width) == (9, 32, 32)
    stages = [e.stage for e in events if e.kind == "stage"]
    assert stages.count("before validation start") == stages.count("after validation end") == 2


def test_tensorboard_writes_event_files(fp8_run):
    _, out, _ = fp8_run
    assert list((out / "logs").rglob("events.out.tfevents.*"))


@pytest.mark.parametrize("used", [False, True])
def test_bitsandbytes_and_deepspeed_are_imported_only_by_runs_that_use_them(used, monkeypatch):
    """The trainer's own process hides bitsandbytes from diffusers and peft unless
    --use_8bit_bnb, and DeepSpeed from accelerate unless accelerate launched it under a
    DeepSpeed config: importlib then reports them missing (their imports cost about 1.6 s and
    0.8 s of every start)."""
    import importlib.util
    import sys

    from core.train import skip_unused_imports

    flags = ["--pretrained_model_name_or_path", "/models/tiny", "--data_root", "/data/clips"]
    config = parse_args(flags + (["--use_8bit_bnb"] if used else []))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true" if used else "false")
    before = {package: sys.modules.pop(package, None) for package in ("bitsandbytes", "deepspeed")}
    try:
        skip_unused_imports(config)
        for package in before:
            assert (importlib.util.find_spec(package) is not None) == used, package
    finally:
        for package, module in before.items():
            sys.modules.pop(package, None)
            if module is not None:
                sys.modules[package] = module
