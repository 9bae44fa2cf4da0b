"""The trainer learns, its LoRA loads with the guide's snippet, and stop/resume is exact."""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import time

import pytest

from core.events import read_events
from core.train import main as train_main


def step_losses(output_dir) -> dict[int, float]:
    """Loss by step; a resumed run's later events overwrite nothing (steps are distinct)."""
    return {e.step: e.loss for e in read_events(output_dir / "events.jsonl") if e.kind == "step"}


@pytest.fixture(scope="module")
def one_clip(tmp_path_factory):
    from core.data.synthetic import make_reference_dataset

    return make_reference_dataset(
        tmp_path_factory.mktemp("one-clip"), count=1, frames=9, height=32, width=48
    )


@pytest.fixture(scope="module")
def learned_lora(tiny_models, one_clip, tmp_path_factory):
    """Three hundred LoRA steps on one clip, in this process."""
    out = tmp_path_factory.mktemp("learn")
    code = train_main(
        [
            "--pretrained_model_name_or_path",
            str(tiny_models["5b"]),
            "--data_root",
            str(one_clip),
            "--video_resolution_buckets",
            "9x32x48",
            "--precompute_conditions",
            "--train_steps",
            "300",
            "--rank",
            "16",
            "--lora_alpha",
            "16",
            "--lr",
            "1e-3",
            "--transformer_dtype",
            "fp32",
            "--seed",
            "0",
            "--checkpointing_steps",
            "1000",
            "--output_dir",
            str(out),
            # Validation decodes fp32 latents with the bf16 VAE: the dtypes must meet.
            "--validation_prompts",
            "a square moving across the frame",
            "--validation_inference_steps",
            "2",
        ]
    )
    assert code == 0
    assert list((out / "validation" / "step-300").glob("*.mp4"))
    return out


def test_loss_falls_clearly_on_one_clip(learned_lora):
    losses = list(step_losses(learned_lora).values())
    assert len(losses) == 300
    first, last = statistics.mean(losses[:20]), statistics.mean(losses[-50:])
    assert last < 0.6 * first, f"loss went from {first:.3f} to {last:.3f}"


def _reference_snippet_frames(base, lora_dir, scale):
    """The guide's inference snippet, on the CPU, returning float frames."""
    import torch
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(base, torch_dtype=torch.bfloat16).to("cpu")
    if lora_dir is not None:
        pipe.load_lora_weights(lora_dir, adapter_name="cogvideox-lora")
        pipe.set_adapters(["cogvideox-lora"], [scale])
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "a square moving across the frame",
        num_frames=9,
        height=32,
        width=48,
        num_inference_steps=4,
        generator=generator,
        output_type="np",
    ).frames[0]


def test_lora_loads_with_the_guide_snippet_and_changes_frames(learned_lora, tiny_models):
    import numpy as np

    base = _reference_snippet_frames(tiny_models["5b"], None, 0.0)
    with_lora = _reference_snippet_frames(tiny_models["5b"], learned_lora, 0.75)
    at_zero = _reference_snippet_frames(tiny_models["5b"], learned_lora, 0.0)
    assert np.abs(with_lora - base).mean() > 1e-3
    assert np.array_equal(at_zero, base)


COMMON = [
    "--video_resolution_buckets",
    "9x32x32",
    "--train_steps",
    "24",
    "--rank",
    "4",
    "--lora_alpha",
    "8",
    "--lr",
    "1e-3",
    "--seed",
    "3",
    "--checkpointing_steps",
    "1000",
    "--lr_scheduler",
    "cosine",
    "--lr_warmup_steps",
    "4",
    "--caption_dropout_p",
    "0.3",
    "--optimizer",
    "adamw",
    "--transformer_dtype",
    "fp32",
]


def _args(models, dataset, out, *extra):
    return [
        "--pretrained_model_name_or_path",
        str(models["2b"]),
        "--data_root",
        str(dataset),
        "--output_dir",
        str(out),
        *COMMON,
        *extra,
    ]


def test_sigterm_checkpoints_and_resume_matches_the_uninterrupted_run(
    tiny_models, reference_dataset, tmp_path, subprocess_env
):
    """Stop with SIGTERM mid-run, resume with 'latest': the same losses, step for step."""
    from diffusers import CogVideoXPipeline

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.train", *_args(tiny_models, reference_dataset, stopped)],
        env=subprocess_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while (
        time.monotonic() < deadline
        and len(step_losses(stopped) if (stopped / "events.jsonl").exists() else {}) < 3
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-2000:]
    last = read_events(stopped / "events.jsonl")[-1]
    assert last.kind == "stopped" and last.checkpoint == f"checkpoint-{last.step}"
    assert 3 <= last.step < 24
    # The checkpoint holds a LoRA that diffusers loads as it is.
    pipe = CogVideoXPipeline.from_pretrained(tiny_models["2b"])
    pipe.load_lora_weights(stopped / last.checkpoint, adapter_name="checkpoint")

    assert (
        train_main(
            _args(tiny_models, reference_dataset, stopped, "--resume_from_checkpoint", "latest")
        )
        == 0
    )
    straight = tmp_path / "straight"
    assert train_main(_args(tiny_models, reference_dataset, straight)) == 0

    resumed, uninterrupted = step_losses(stopped), step_losses(straight)
    assert sorted(resumed) == list(range(1, 25))
    for step in range(1, 25):
        assert resumed[step] == uninterrupted[step], step


SENTINEL = "earlier-run-result.txt"


@pytest.fixture
def output_with_history(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / SENTINEL).write_text("keep me")
    return out


def _bad_dataset(tmp_path, kind):
    from core.data.synthetic import make_reference_dataset

    root = tmp_path / kind
    if kind == "empty":
        root.mkdir()
        (root / "prompt.txt").write_text("")
        (root / "videos.txt").write_text("")
    else:  # one clip of 5 frames: shorter than the 9-frame bucket
        make_reference_dataset(root, count=1, frames=5)
    return root


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("missing data_root", "--data_root is missing"),
        ("empty dataset", "is empty"),
        ("clip shorter than every bucket", "too short: 5 frames"),
        ("malformed bucket", "--video_resolution_buckets: '49x480' is not FxHxW"),
        ("unknown target module", "--target_modules: 'to_qq' matches no layer"),
        ("missing model folder", "--pretrained_model_name_or_path: the model folder"),
        ("unwritable output dir", "--output_dir: cannot write to"),
    ],
)
def test_bad_input_is_one_sentence_and_loses_nothing(
    case, expected, tiny_models, reference_dataset, output_with_history, tmp_path, capsys
):
    out = output_with_history
    settings = {
        "--pretrained_model_name_or_path": str(tiny_models["5b"]),
        "--data_root": str(reference_dataset),
        "--video_resolution_buckets": "9x32x32",
        "--output_dir": str(out),
        "--train_steps": "2",
    }
    if case == "missing data_root":
        del settings["--data_root"]
    elif case == "empty dataset":
        settings["--data_root"] = str(_bad_dataset(tmp_path, "empty"))
    elif case == "clip shorter than every bucket":
        settings["--data_root"] = str(_bad_dataset(tmp_path, "short"))
    elif case == "malformed bucket":
        settings["--video_resolution_buckets"] = "49x480"
    elif case == "missing model folder":
        settings["--pretrained_model_name_or_path"] = str(tmp_path / "no-such-model")
    elif case == "unwritable output dir":
        settings["--output_dir"] = str(out / SENTINEL / "inside-a-file")
    argv = [item for pair in settings.items() for item in pair]
    if case == "unknown target module":
        argv += ["--target_modules", "to_q", "to_qq"]

    code = train_main(argv)

    error_lines = [
        line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")
    ]
    assert code == 2
    assert len(error_lines) == 1 and expected in error_lines[0], error_lines
    assert (out / SENTINEL).read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) in ([SENTINEL], [SENTINEL, "events.jsonl"])
    if (out / "events.jsonl").exists():
        assert read_events(out / "events.jsonl")[-1].kind == "failed"
