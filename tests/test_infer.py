"""Previews: the LoRA beside the base, exact at scale 0, a side-by-side grid, and a warm worker
that keeps the base loaded while LoRAs come and go."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from core.data.video import probe, read_frames
from core.errors import UserError
from core.events import read_events
from core.infer import LORA_WEIGHTS, PipelineCache, generate, main
from core.preview_protocol import LoraChoice, PreviewRequest, result, submit
from core.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def lora(tiny_models, reference_dataset, tmp_path_factory) -> Path:
    """A LoRA trained hard enough (lr 1e-2) that its effect on a preview is plain to see."""
    out = tmp_path_factory.mktemp("lora")
    code = train_main(
        [
            "--pretrained_model_name_or_path",
            str(tiny_models["5b"]),
            "--data_root",
            str(reference_dataset),
            "--video_resolution_buckets",
            "9x32x32",
            "--precompute_conditions",
            "--train_steps",
            "20",
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
    assert code == 0
    return out


@pytest.fixture(scope="module")
def half_lora(lora, tmp_path_factory) -> Path:
    """Another LoRA: the first with its B matrices halved, so at scale 1 it must render exactly
    what the first renders at scale 0.5 (halving is exact in floating point)."""
    from safetensors.torch import load_file, save_file

    state = load_file(lora / LORA_WEIGHTS)
    halved = {key: value / 2 if "lora_B" in key else value for key, value in state.items()}
    folder = tmp_path_factory.mktemp("half-lora")
    save_file(halved, folder / LORA_WEIGHTS, metadata=_metadata(lora / LORA_WEIGHTS))
    return folder


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata() or {}


@pytest.fixture(scope="module")
def misfit_lora(lora, tmp_path_factory) -> Path:
    """A LoRA for a wider model: every layer's shape is wrong for the tiny base."""
    import torch
    from safetensors.torch import load_file, save_file

    wider = {}
    for key, value in load_file(lora / LORA_WEIGHTS).items():
        rows, columns = value.shape
        shape = (rows * 2, columns) if "lora_B" in key else (rows, columns * 2)
        wider[key] = torch.zeros(shape)
    folder = tmp_path_factory.mktemp("misfit-lora")
    save_file(wider, folder / LORA_WEIGHTS)
    return folder


def make_request(models, lora=None, scale=1.0, **extra) -> PreviewRequest:
    loras = [LoraChoice(path=str(lora), scale=scale)] if lora else []
    settings = dict(
        base=str(models["5b"]),
        loras=loras,
        prompt="a square moving",
        frames=9,
        height=32,
        width=32,
        steps=3,
        seed=1,
        dtype="fp32",
    )
    return PreviewRequest(**{**settings, **extra})


def frames_of(path: Path) -> np.ndarray:
    return read_frames(path, list(range(probe(path).frames))).astype(np.float32)


def difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


@pytest.fixture(scope="module")
def references(tiny_models, lora, tmp_path_factory):
    """Decoded frames of the base and of the LoRA at 1 and 0.5, rendered in this process with one
    cache (which therefore loads the base once)."""
    out = tmp_path_factory.mktemp("references")
    cache = PipelineCache()
    frames = {}
    for name, lora_path, scale in (("base", None, 1.0), ("lora", lora, 1.0), ("half", lora, 0.5)):
        rendered = generate(make_request(tiny_models, lora_path, scale), cache, out / f"{name}.mp4")
        frames[name] = frames_of(rendered.path)
    assert cache.base_loads == 1
    return frames


def test_the_lora_changes_the_preview_clearly(references):
    assert difference(references["lora"], references["base"]) > 2.0
    assert difference(references["half"], references["base"]) > 1.0


def test_scale_zero_is_exactly_the_base_and_the_settings_lie_beside(
    tiny_models, lora, references, tmp_path
):
    cache = PipelineCache()
    generate(make_request(tiny_models, lora, 1.0), cache, tmp_path / "lora.mp4")  # adapter active
    at_zero = generate(make_request(tiny_models, lora, 0.0), cache, tmp_path / "zero.mp4")
    assert np.array_equal(frames_of(at_zero.path), references["base"])
    assert cache.base_loads == 1 and at_zero.base_loads == 1
    assert at_zero.first_step_seconds is not None and at_zero.first_step_seconds > 0
    settings = json.loads((tmp_path / "zero.json").read_text())
    assert settings["seed"] == 1 and settings["loras"][0]["scale"] == 0.0
    assert settings["base_loads"] == 1 and settings["seconds"] > 0


def test_a_lora_saved_again_is_loaded_again(tiny_models, lora, half_lora, references, tmp_path):
    """A run that saves to the same place again must not be previewed from a stale adapter."""
    moving = tmp_path / "run"
    shutil.copytree(lora, moving)
    cache = PipelineCache()
    before = generate(make_request(tiny_models, moving), cache, tmp_path / "before.mp4")
    assert difference(frames_of(before.path), references["lora"]) < 0.5
    time.sleep(0.01)  # a distinct modification time even on coarse clocks
    shutil.copyfile(half_lora / LORA_WEIGHTS, moving / LORA_WEIGHTS)
    after = generate(make_request(tiny_models, moving), cache, tmp_path / "after.mp4")
    assert difference(frames_of(after.path), references["half"]) < 0.5
    assert cache.base_loads == 1


def test_a_finetuned_transformer_replaces_the_base_one(tiny_models, references, tmp_path):
    run = tmp_path / "run"  # a full finetune's output folder: the transformer in transformer/
    shutil.copytree(tiny_models["5b"] / "transformer", run / "transformer")
    cache = PipelineCache()
    same = generate(make_request(tiny_models, transformer=str(run)), cache, tmp_path / "t.mp4")
    assert np.array_equal(frames_of(same.path), references["base"])  # the base's own weights
    other = str(tiny_models["2b"] / "transformer")  # no rotary embeddings: not the 5b's kind
    with pytest.raises(UserError, match="does not fit the base model"):
        generate(make_request(tiny_models, transformer=other), cache, tmp_path / "u.mp4")
    assert cache.base_loads == 1  # refused before anything was loaded or freed


def test_side_by_side_has_a_labelled_panel_per_scale_and_the_same_frames(
    tiny_models, lora, references, tmp_path
):
    grid = generate(
        make_request(tiny_models, lora, compare_scales=[0.5, 1.0]),
        PipelineCache(),
        tmp_path / "grid.mp4",
    )
    info = probe(grid.path)
    assert (info.frames, info.height, info.width) == (9, 32, 3 * 32)
    assert grid.panels == ["base", "LoRA x0.5", "LoRA x1"]
    frames = frames_of(grid.path)
    # Each panel, below its label, is nearest to the video it stands for (the grid is encoded
    # as one picture, so not bit for bit).
    below_label = slice(20, None)
    for index, expected in enumerate(("base", "half", "lora")):
        panel = frames[:, below_label, index * 32 : (index + 1) * 32]
        distances = {
            name: difference(panel, reference[:, below_label])
            for name, reference in references.items()
        }
        assert min(distances, key=distances.get) == expected, distances
        assert frames[:, :2, index * 32 : (index + 1) * 32].mean() < 40  # the label's dark box


def test_requests_are_checked_like_the_trainer_checks_its_settings(tiny_models):
    with pytest.raises(ValidationError, match="4k\\+1 frames; the nearest are 9"):
        make_request(tiny_models, frames=10)
    with pytest.raises(ValidationError, match="multiple of 16"):
        make_request(tiny_models, width=40)
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        make_request(tiny_models, steps=0)
    with pytest.raises(ValidationError, match="needs a LoRA"):
        make_request(tiny_models, compare_scales=[1.0])


def test_the_protocol_module_imports_no_torch():
    code = "import sys, core.preview_protocol; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_the_command_line_writes_a_preview_or_says_what_is_wrong(
    tiny_models, lora, tmp_path, capsys
):
    common = ["--prompt", "a square", "--frames", "9", "--height", "32", "--width", "32"]
    common += ["--steps", "2", "--dtype", "fp32"]
    out = tmp_path / "cli.mp4"
    base = ["--base", str(tiny_models["5b"])]
    code = main(["generate", *base, "--lora", f"{lora}:0.75", *common, "--out", str(out)])
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    assert probe(out).frames == 9
    missing = tmp_path / "no-such-model"
    code = main(["generate", "--base", str(missing), *common, "--out", str(out)])
    error = capsys.readouterr().err.strip()
    assert code == 2 and error == f"error: base model: the model folder {missing} does not exist"
    code = main(
        ["generate", *base, "--lora", str(lora), *common, "--compare", "x", "--out", str(out)]
    )
    assert code == 2


def _start_worker(worker: Path, idle_timeout: float, log=None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    argv = ["serve", "--dir", str(worker), "--idle-timeout", str(idle_timeout)]
    return subprocess.Popen(
        [sys.executable, "-m", "core.infer", *argv], env=env, cwd=REPO, stdout=log
    )


@pytest.fixture(scope="module")
def idle_worker(tmp_path_factory):
    """A worker with nothing to do and a 3 s idle timeout.

    The warm worker test asks for it only to start it early: its start-up then overlaps that
    test's work instead of adding to the file's time.
    """
    folder = tmp_path_factory.mktemp("idle-worker")
    with open(folder / "worker.log", "wb") as log:
        proc = _start_worker(folder / "worker", idle_timeout=3, log=log)
    yield proc, folder, time.monotonic()
    if proc.poll() is None:
        proc.kill()


def _final(worker: Path, request_id: str, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while (event := result(worker, request_id)) is None:
        assert proc.poll() is None, f"the worker exited ({proc.returncode}) before answering"
        assert time.monotonic() < deadline, "no answer from the worker"
        time.sleep(0.05)
    return event


def _wait_for_status(worker: Path, request_id: str, status: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not any(
        event.kind == "preview" and event.request_id == request_id and event.status == status
        for event in read_events(worker / "events.jsonl")
    ):
        assert proc.poll() is None and time.monotonic() < deadline, f"no '{status}' event"
        time.sleep(0.05)


def test_a_warm_worker_keeps_the_base_and_swaps_loras(
    tiny_models, lora, half_lora, misfit_lora, references, tmp_path, idle_worker
):
    worker = tmp_path / "worker"
    # All queued before the worker starts: it must take them oldest first.
    ids = {
        "lora": submit(worker, make_request(tiny_models, lora, 1.0)),
        "base": submit(worker, make_request(tiny_models)),
        "missing": submit(worker, make_request(tiny_models, base=str(tmp_path / "no-such-model"))),
        "half": submit(worker, make_request(tiny_models, half_lora, 1.0)),
        "misfit": submit(worker, make_request(tiny_models, misfit_lora, 1.0)),
    }
    proc = _start_worker(worker, idle_timeout=20)
    try:
        answers = {name: _final(worker, request_id, proc) for name, request_id in ids.items()}
        # A stop in the middle of a long preview abandons it with a final event and exits 0.
        ids["long"] = submit(worker, make_request(tiny_models, steps=1000))
        _wait_for_status(worker, ids["long"], "generating", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        answers["long"] = result(worker, ids["long"])
    finally:
        if proc.poll() is None:
            proc.kill()

    first = answers["lora"]
    assert first.status == "done" and first.base_loads == 1
    assert 0 < first.first_step_seconds < first.seconds
    assert first.files == [f"outputs/{ids['lora']}.mp4", f"outputs/{ids['lora']}.json"]
    assert difference(frames_of(worker / first.files[0]), references["lora"]) < 0.5

    # The same base again: no second load, and without a LoRA it is the base itself.
    assert answers["base"].status == "done" and answers["base"].base_loads == 1
    assert difference(frames_of(worker / answers["base"].files[0]), references["base"]) < 0.5

    missing = answers["missing"]
    assert missing.status == "failed"
    assert missing.message == (
        f"base model: the model folder {tmp_path / 'no-such-model'} does not exist"
    )

    # Swapped to another LoRA after the failure: still no reload, and the new LoRA's output.
    half = answers["half"]
    assert half.status == "done" and half.base_loads == 1
    assert difference(frames_of(worker / half.files[0]), references["half"]) < 0.5

    misfit = answers["misfit"]
    assert misfit.status == "failed" and "does not fit the base model" in misfit.message
    assert "\n" not in misfit.message

    assert answers["long"].status == "failed" and "stopped" in answers["long"].message

    events = [e for e in read_events(worker / "events.jsonl") if e.kind == "preview"]
    statuses = {name: [e.status for e in events if e.request_id == ids[name]] for name in ids}
    assert statuses["lora"] == ["started", "loading", "generating", "done"]
    assert statuses["base"] == ["started", "generating", "done"]
    assert statuses["missing"] == ["started", "failed"]
    order = [e.request_id for e in events if e.status == "started"]
    assert order == list(ids.values())
    assert sorted(p.name for p in (worker / "requests" / "done").iterdir()) == sorted(
        f"{request_id}.json" for request_id in ids.values()
    )
    assert not list((worker / "requests").glob("*.json"))


def test_an_idle_worker_exits_by_itself(idle_worker):
    proc, folder, started = idle_worker
    assert proc.wait(timeout=90) == 0
    assert time.monotonic() - started >= 3
    assert "idle, exiting" in (folder / "worker.log").read_text()
    assert (folder / "worker" / "events.jsonl").read_text() == ""
