"""The precompute cache: a second run encodes nothing; edits and damage re-encode just enough."""

from __future__ import annotations

from collections import Counter

import pytest

from core.events import read_events
from core.models.cogvideox import CogVideoX
from core.train import main as train_main


@pytest.fixture
def encoder_calls(monkeypatch) -> Counter:
    """Counts of encoder loads and calls made by the trainer in this process."""
    calls: Counter = Counter()

    def counting(name, original):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return original(*args, **kwargs)

        return wrapper

    for name in ("encode_prompts", "encode_videos", "load_text_encoder", "load_vae"):
        monkeypatch.setattr(CogVideoX, name, counting(name, getattr(CogVideoX, name)))
    return calls


def run(models, dataset, out, cache):
    return train_main(
        [
            "--pretrained_model_name_or_path",
            str(models["5b"]),
            "--data_root",
            str(dataset),
            "--video_resolution_buckets",
            "9x32x32",
            "--precompute_conditions",
            "--train_steps",
            "2",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(cache),
            "--seed",
            "0",
        ]
    )


def test_second_run_encodes_nothing_and_edits_reencode_one_caption(
    tiny_models, reference_dataset, tmp_path, encoder_calls
):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(reference_dataset, data)
    cache = tmp_path / "cache"

    assert run(tiny_models, data, tmp_path / "first", cache) == 0
    # 4 captions + the empty prompt; 4 clips.
    assert encoder_calls["encode_prompts"] == 5 and encoder_calls["encode_videos"] == 4
    progress = [
        e
        for e in read_events(tmp_path / "first" / "events.jsonl")
        if e.kind == "progress" and e.phase == "encoding clips"
    ]
    assert [(e.done, e.total) for e in progress] == [(i, 4) for i in range(5)]

    encoder_calls.clear()
    assert run(tiny_models, data, tmp_path / "second", cache) == 0
    assert encoder_calls == Counter(), "a second run on the same data encoded again"

    captions = (data / "prompt.txt").read_text().splitlines()
    captions[2] = "an edited caption"
    (data / "prompt.txt").write_text("\n".join(captions) + "\n")
    encoder_calls.clear()
    assert run(tiny_models, data, tmp_path / "third", cache) == 0
    assert encoder_calls == Counter(encode_prompts=1, load_text_encoder=1)


def test_damaged_entries_are_encoded_again_never_trained_on(
    tiny_models, reference_dataset, tmp_path, encoder_calls
):
    cache = tmp_path / "cache"
    assert run(tiny_models, reference_dataset, tmp_path / "first", cache) == 0
    # The smallest entries hold tiny latents, the largest prompt embeddings: damage one of each.
    entries = sorted((cache / "precomputed").rglob("*.safetensors"), key=lambda p: p.stat().st_size)
    truncated, flipped = entries[0], entries[-1]
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    data = bytearray(flipped.read_bytes())
    data[-5] ^= 0xFF
    flipped.write_bytes(bytes(data))

    encoder_calls.clear()
    assert run(tiny_models, reference_dataset, tmp_path / "second", cache) == 0
    assert encoder_calls["encode_prompts"] == 1 and encoder_calls["encode_videos"] == 1
    assert truncated.is_file() and flipped.is_file()  # rewritten whole
    encoder_calls.clear()
    assert run(tiny_models, reference_dataset, tmp_path / "third", cache) == 0
    assert encoder_calls == Counter()
