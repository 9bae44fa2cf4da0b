"""Previews: the LoRA beside the base, exact at scale 0, and a warm worker that keeps the base."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from core.data.video import probe, read_frames
from core.infer import PipelineCache, generate
from core.preview_protocol import LoraChoice, PreviewRequest, result, submit
from core.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lora_run(tiny_models, reference_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora")
    assert (
        train_main(
            [
                "--pretrained_model_name_or_path",
                str(tiny_models["5b"]),
                "--data_root",
                str(reference_dataset),
                "--video_resolution_buckets",
                "9x32x32",
                "--precompute_conditions",
                "--train_steps",
                "60",
                "--lr",
                "1e-2",
                "--rank",
                "8",
                "--lora_alpha",
                "8",
                "--transformer_dtype",
                "fp32",
                "--seed",
                "0",
                "--checkpointing_steps",
                "1000",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    return out


def request(models, lora=None, scale=1.0, **extra) -> PreviewRequest:
    loras = [LoraChoice(path=str(lora), scale=scale)] if lora else []
    return PreviewRequest(
        base=str(models["5b"]),
        loras=loras,
        prompt="a square moving",
        frames=9,
        height=32,
        width=32,
        steps=3,
        seed=1,
        dtype="fp32",
        **extra,
    )


def frames_of(path: Path) -> np.ndarray:
    return read_frames(path, list(range(probe(path).frames))).astype(np.float32)


def test_the_lora_changes_the_preview_and_scale_zero_is_the_base(tiny_models, lora_run, tmp_path):
    cache = PipelineCache()
    base = generate(request(tiny_models), cache, tmp_path / "base.mp4")
    with_lora = generate(request(tiny_models, lora_run, 1.0), cache, tmp_path / "lora.mp4")
    at_zero = generate(request(tiny_models, lora_run, 0.0), cache, tmp_path / "zero.mp4")
    assert np.abs(frames_of(with_lora.path) - frames_of(base.path)).mean() > 1.0
    assert np.array_equal(frames_of(at_zero.path), frames_of(base.path))
    assert cache.base_loads == 1
    assert (tmp_path / "lora.json").is_file()


def test_side_by_side_has_a_panel_per_scale_and_the_same_frames(tiny_models, lora_run, tmp_path):
    grid = generate(
        request(tiny_models, lora_run, compare_scales=[0.5, 1.0]),
        PipelineCache(),
        tmp_path / "grid.mp4",
    )
    info = probe(grid.path)
    assert (info.frames, info.height, info.width) == (9, 32, 3 * 32)


def test_a_warm_worker_loads_the_base_once_and_exits_when_idle(tiny_models, lora_run, tmp_path):
    worker = tmp_path / "worker"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    first = submit(worker, request(tiny_models, lora_run, 1.0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "core.infer", "serve", "--dir", str(worker), "--idle-timeout", "4"],
        env=env,
        cwd=REPO,
    )
    try:

        def final(request_id):
            deadline = time.monotonic() + 120
            while (event := result(worker, request_id)) is None:
                assert time.monotonic() < deadline, "no answer from the worker"
                time.sleep(0.1)
            return event

        one = final(first)
        assert one.status == "done" and one.base_loads == 1 and one.first_step_seconds
        second = final(submit(worker, request(tiny_models)))  # no LoRA now: the base itself
        assert second.status == "done" and second.base_loads == 1
        broken = final(
            submit(
                worker,
                request(tiny_models).model_copy(update={"base": str(tmp_path / "no-such-model")}),
            )
        )
        assert broken.status == "failed" and "does not exist" in broken.message
        third = final(submit(worker, request(tiny_models, lora_run, 0.5)))
        assert third.status == "done"
        assert (worker / second.files[0]).is_file()
        assert proc.wait(timeout=60) == 0  # idle for 4 s: it gives its memory back
    finally:
        if proc.poll() is None:
            proc.kill()
