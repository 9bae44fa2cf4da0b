"""The memory model: live-storage counting, the caching allocator's rules, and fake tensors'
prediction checked against real tensors where the truth is at hand (tiny models on the CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from core.caching_allocator import CachingAllocator, round_size, segment_size
from core.live_memory import LiveMemoryTracker

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import memory_model  # noqa: E402
import memory_stages  # noqa: E402

MiB = 1024**2


def test_the_tracker_counts_each_storage_once_until_it_is_freed():
    tracker = LiveMemoryTracker(traced="cpu")
    with tracker:
        a = torch.empty(1000, dtype=torch.float32)
        view = a[10:20]  # the same storage
        b = a * 2
        assert tracker.live("cpu") == 8000
        del a, b
        assert tracker.live("cpu") == 4000  # the view keeps its storage alive
        del view
        tracker.hold("cpu", 100)
        tracker.transient("cpu", 5000)
    assert tracker.live("cpu") == 100 and tracker.peak("cpu") == 8000
    assert [event.size for event in tracker.trace][-4:] == [-4000, 100, 5000, -5000]


def test_the_allocator_rounds_pools_and_splits_as_torch_does():
    assert round_size(1) == 512 and round_size(513) == 1024
    assert segment_size(512) == 2 * MiB  # the small pool's segments
    assert segment_size(3 * MiB) == 20 * MiB  # a large request under 10 MiB
    assert segment_size(11 * MiB + 1) == 12 * MiB  # bigger ones: rounded up to 2 MiB
    allocator = CachingAllocator()
    allocator.replay([(1, 100), (2, 3 * MiB)])
    assert (allocator.allocated, allocator.reserved) == (512 + 3 * MiB, 22 * MiB)
    # A freed block is cached: the next request that fits reuses the segment (best fit, split).
    allocator.replay([(2, -1), (3, 5 * MiB), (4, 12 * MiB)])
    assert allocator.reserved == 22 * MiB
    # 3 MiB are left in the 20 MiB segment: an 11 MiB request gets a segment of its own.
    allocator.replay([(5, 11 * MiB)])
    assert allocator.reserved == 34 * MiB and allocator.max_reserved == 34 * MiB
    allocator.replay([(3, -1), (5, -1)])
    allocator.empty_cache()  # the 11 MiB segment is wholly free; the 20 MiB one holds block 4
    assert allocator.reserved == 22 * MiB
    allocator.replay([(1, -1), (4, -1)])
    allocator.empty_cache()
    assert (allocator.allocated, allocator.reserved) == (0, 0)


def test_expandable_segments_grow_one_segment_instead_of_stranding_free_blocks():
    # Two 12 MiB tensors, the second freed, then a 20 MiB one: the default allocator cannot fit
    # it in the freed 12 MiB segment and adds one; an expandable segment grows its free end.
    trace = [(1, 12 * MiB), (2, 12 * MiB), (2, -1), (3, 20 * MiB)]
    default, expandable = CachingAllocator(), CachingAllocator(expandable_segments=True)
    default.replay(trace)
    expandable.replay(trace)
    assert default.max_reserved == 44 * MiB
    assert expandable.max_reserved == 32 * MiB  # 24 MiB, then 8 more pages


# ---- fake tensors against real ones ---------------------------------------------------------

# Each family's run takes a different path: the 5b a LoRA over fp8 storage with 8-bit AdamW and
# offloaded activations; the 1.5 a full finetune with torch's AdamW, half its blocks checkpointed.
TINY_RUNS = {
    "5b": ("lora", "fp8+offload+rank=8"),
    "1.5": ("full", "adamw+checkpointing=0.5"),
    "5b-i2v": ("lora", "offload+rank=8"),
}


@pytest.fixture(scope="module")
def tiny_checkpoints(tiny_models, tiny_i2v_models, tmp_path_factory):
    """The tiny checkpoints the memory model runs on; the image-to-video one with the image
    its validation video starts from, as the full-size configs have it."""
    import shutil

    from PIL import Image

    i2v = tmp_path_factory.mktemp("memory") / "5b-i2v"
    shutil.copytree(tiny_i2v_models["5b-i2v"], i2v)
    Image.new("RGB", (32, 32), (128, 96, 64)).save(i2v / memory_model.VALIDATION_IMAGE)
    return {**tiny_models, "5b-i2v": i2v}


@pytest.mark.parametrize("variant", list(TINY_RUNS))
def test_fake_tensors_predict_the_peak_real_tensors_reach_at_every_stage(variant, tiny_checkpoints):
    """The same run (the trainer's parts, stage by stage) with real tensors on the CPU and with
    fake ones: the tracker's peak of live bytes in each stage agrees within 5%."""
    training, options = TINY_RUNS[variant]
    settings = memory_model.reference_settings(training)
    config = memory_model.make_train_config(tiny_checkpoints[variant], "9x32x32", settings, options)
    cpu = torch.device("cpu")
    tables = {
        fake: memory_stages.run_stages(
            config, memory_stages.World(fake=fake, device=cpu), (9, 32, 32)
        ).table()
        for fake in (False, True)
    }
    real, predicted = tables[False], tables[True]
    assert (
        [row.stage for row in predicted]
        == [row.stage for row in real]
        == [
            "after precomputing conditions",
            "after precomputing latents",
            "before training start",
            "after epoch 1",
            "before validation start",
            "after validation end",
            "after training end",
        ]
    )
    for measured, prediction in zip(real, predicted, strict=True):
        assert prediction.peak_live == pytest.approx(measured.peak_live, rel=0.05), measured.stage
        assert prediction.live == pytest.approx(measured.live, rel=0.05), measured.stage


# ---- the command line, on a tiny model's configs --------------------------------------------


def test_the_model_prints_the_reference_stages_and_ends_with_the_recommended_peak(
    tiny_models, capsys
):
    """The full-size path (the meta stand-in, the GPU's attention kernel and workspaces, the
    allocator) on a tiny model's configs; the recommended options' offloaded activations wait
    in CPU memory (at this size they are too small to lower the device's peak)."""
    configs = [("reference", ""), ("recommended", memory_model.RECOMMENDED_OPTIONS)]
    reference, recommended = memory_model.report(
        "5b", "lora", configs, "9x32x32", tiny_models["5b"]
    )
    output = capsys.readouterr().out
    rows = [line for line in output.splitlines() if line.startswith(("| after", "| before"))]
    assert len(rows) == 7
    assert rows[2].startswith("| before training start | 10.62 | 20.70 |")  # the reference's
    training = "after epoch 1"
    assert recommended.row(training).host_peak > reference.row(training).host_peak
    last = output.strip().splitlines()[-1]
    assert last == f"predicted_peak_gb_5b_lora: {recommended.training_reserved_gb:.2f}"


# ---- the figures the app shows ---------------------------------------------------------------


def test_each_gpu_preset_shows_the_figure_predicted_for_its_settings():
    """Presets name the memory the model predicted for their own settings; a preset changed
    since needs `python bench/memory_model.py --write-figures` again."""
    import json

    import memory_figures

    figures = json.loads(memory_model.FIGURES.read_text())
    presets = memory_figures.gpu_presets()
    assert set(figures["presets"]) == set(presets)
    for name, preset in presets.items():
        entry = figures["presets"][name]
        assert entry["settings"] == memory_figures.memory_settings(preset["train"]), (
            f"{name} changed since its memory was predicted: run bench/memory_model.py "
            "--write-figures"
        )
        assert preset["gpu_memory"] == memory_figures.memory_text(entry)
    # The goals, for the recommended 5B LoRA and the 5B full finetune with 8-bit AdamW.
    recommended = figures["presets"]["2-5b-lora-recommended.json"]
    assert recommended["training_reserved_gb"] <= 16 and recommended["validation_reserved_gb"] <= 20
    assert figures["presets"]["4-5b-full-finetune.json"]["training_reserved_gb"] <= 45
