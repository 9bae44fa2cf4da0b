"""The trainer's speed and memory switches change how a step runs, never what it computes."""

from __future__ import annotations

import os

import pytest

from core.config import parse_args
from core.errors import EXIT_USER_ERROR
from core.events import read_events
from core.train import LORA_WEIGHTS, Trainer

STEPS = 5


def _run(tiny_models, dataset, out, *extra):
    config = parse_args(
        [
            "--pretrained_model_name_or_path",
            str(tiny_models["5b"]),
            "--data_root",
            str(dataset),
            "--video_resolution_buckets",
            "9x32x32",
            "--output_dir",
            str(out),
            "--train_steps",
            str(STEPS),
            "--lr",
            "1e-3",
            "--seed",
            "3",
            "--precompute_conditions",
            # fp32, so a fused kernel's other rounding order stays far below the tolerance
            "--transformer_dtype",
            "fp32",
            *extra,
        ]
    )
    trainer = Trainer(config)
    code = trainer.run()
    return trainer, code, read_events(out / "events.jsonl")


@pytest.fixture(scope="module")
def plain_and_tuned(tiny_models, reference_dataset, tmp_path_factory):
    """The same run twice: as the reference would run it, and with every speed switch on."""
    plain = _run(tiny_models, reference_dataset, tmp_path_factory.mktemp("plain"))
    allocator = os.environ.get("PYTORCH_CUDA_ALLOC_CONF")
    tuned = _run(
        tiny_models,
        reference_dataset,
        tmp_path_factory.mktemp("tuned"),
        "--logging_steps",
        "3",
        "--optimizer_implementation",
        "foreach",
        "--attention_backend",
        "math",
        "--gradient_checkpointing",
        "--gradient_checkpointing_ratio",
        "0.5",
        "--compile_transformer_blocks",
        "--expandable_segments",
    )
    tuned[0].allocator_settings = os.environ.pop("PYTORCH_CUDA_ALLOC_CONF", "")
    if allocator is not None:
        os.environ["PYTORCH_CUDA_ALLOC_CONF"] = allocator
    return plain, tuned


@pytest.fixture(scope="module")
def offloaded(tiny_models, reference_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("offloaded")
    flags = ["--gradient_checkpointing", "--offload_activations"]
    return _run(tiny_models, reference_dataset, out, *flags)


def _losses(events):
    return {e.step: e.loss for e in events if e.kind == "step"}


def test_switches_leave_the_losses_unchanged(plain_and_tuned):
    (_, plain_code, plain_events), (_, tuned_code, tuned_events) = plain_and_tuned
    assert plain_code == tuned_code == 0
    plain, tuned = _losses(plain_events), _losses(tuned_events)
    # Reading the loss every 3 steps still reports every step, once, in order.
    assert list(tuned) == list(range(1, STEPS + 1))
    # Same weights at step 1: the same loss. After that, the math attention kernel's other
    # summation order moves tiny gradients, which Adam's normalisation turns into small drifts.
    assert tuned[1] == pytest.approx(plain[1], rel=1e-5)
    for step in plain:
        assert tuned[step] == pytest.approx(plain[step], rel=5e-3)


def test_steps_read_together_share_their_time(plain_and_tuned):
    _, (_, _, events) = plain_and_tuned
    steps = [e for e in events if e.kind == "step"]
    # Steps 1-3 were read back in one transfer; 4-5 at the end of the run.
    assert steps[0].step_seconds == steps[1].step_seconds == steps[2].step_seconds
    assert steps[3].step_seconds == steps[4].step_seconds
    assert all(e.grad_norm is not None and e.grad_norm >= 0 for e in steps)
    assert steps[-1].eta_seconds == 0


def test_partial_checkpointing_and_compile_keep_the_lora_keys(plain_and_tuned):
    from safetensors.torch import load_file

    (plain, _, _), (tuned, _, _) = plain_and_tuned
    transformer = tuned.accelerator.unwrap_model(tuned.transformer)
    blocks = transformer.transformer_blocks
    # Half of the two tiny blocks recompute their activations, through a wrapper on the block.
    assert [getattr(b.forward, "__wrapped__", None) is not None for b in blocks] == [True, False]
    assert not transformer.gradient_checkpointing
    assert all(b._compiled_call_impl is not None for b in blocks)
    plain_keys = load_file(plain.output_dir / LORA_WEIGHTS).keys()
    assert load_file(tuned.output_dir / LORA_WEIGHTS).keys() == plain_keys
    assert "expandable_segments:True" in tuned.allocator_settings


def test_offloaded_activations_train_every_block_alike(plain_and_tuned, offloaded):
    from safetensors.torch import load_file

    (plain, _, plain_events), _ = plain_and_tuned
    trainer, code, events = offloaded
    assert code == 0
    for step, loss in _losses(plain_events).items():
        assert _losses(events)[step] == pytest.approx(loss, rel=1e-5)
    # The first block's input comes from frozen layers; its LoRA still learned, as in the plain
    # run (lora_B starts at zero).
    lora = load_file(trainer.output_dir / LORA_WEIGHTS)
    reference = load_file(plain.output_dir / LORA_WEIGHTS)
    for key, value in lora.items():
        if "lora_B" in key:
            assert value.abs().sum() > 0, key
        assert value.float().sub(reference[key].float()).abs().max() < 1e-4, key


def test_an_attention_kernel_the_machine_lacks_is_one_sentence(
    tiny_models, reference_dataset, tmp_path
):
    """What only the machine can tell fails in the run (two settings that can't work together
    are refused by TrainConfig itself: tests/test_config.py)."""
    extra, expected = ["--attention_backend", "flash"], "--attention_backend flash needs a CUDA GPU"
    _, code, events = _run(tiny_models, reference_dataset, tmp_path / "out", *extra)
    failed = [e for e in events if e.kind == "failed"]
    assert code == EXIT_USER_ERROR
    assert len(failed) == 1 and failed[0].message.startswith(expected)
    assert "\n" not in failed[0].message


def test_fastest_attention_falls_back_to_torchs_choice_off_cuda():
    import torch

    from core.performance import check_attention_backend, fastest_attention_backend

    cpu = torch.device("cpu")
    assert fastest_attention_backend(cpu, torch.float32, heads=2, head_dim=64, tokens=300) == "auto"
    check_attention_backend("fastest", cpu, torch.float32)  # resolved later, never refused
    check_attention_backend("math", cpu, torch.float32)
