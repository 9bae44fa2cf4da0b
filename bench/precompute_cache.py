"""Precompute time of a first run against a second run on the same data and model.

The first run encodes every caption and clip (loading the text encoder and the VAE); the second
finds them all in the cache. The precompute phase is read from the trainer's own events: from
the first "encoding prompts" progress event to the "after precomputing latents" stage.

    python bench/precompute_cache.py [--clips 6] [--shape 33x256x384]

Last line: `precompute_second_over_first: <second run's phase / first run's phase>` (target
at most 0.05).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def precompute_seconds(model: Path, data: Path, out: Path, cache: Path, shape: str) -> float:
    from core.events import read_events
    from core.train import main

    code = main(
        [
            "--pretrained_model_name_or_path",
            str(model),
            "--data_root",
            str(data),
            "--video_resolution_buckets",
            shape,
            "--precompute_conditions",
            "--train_steps",
            "1",
            "--output_dir",
            str(out),
            "--cache_dir",
            str(cache),
            "--transformer_dtype",
            "fp32",
            "--vae_dtype",
            "fp32",
            "--text_encoder_dtype",
            "fp32",
        ]
    )
    if code != 0:
        raise SystemExit("the trainer failed; see its messages above")
    events = read_events(out / "events.jsonl")
    start = next(e.time for e in events if e.kind == "progress" and e.phase == "encoding prompts")
    end = next(
        e.time for e in events if e.kind == "stage" and e.stage == "after precomputing latents"
    )
    return end - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--shape", default="33x256x384")
    args = parser.parse_args()
    frames, height, width = (int(v) for v in args.shape.split("x"))

    from core.data.synthetic import make_reference_dataset
    from core.tiny import build_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_checkpoint(tmp / "tiny-5b", "5b")
        data = make_reference_dataset(
            tmp / "data", count=args.clips, frames=frames, height=height, width=width
        )
        first = precompute_seconds(model, data, tmp / "first", tmp / "cache", args.shape)
        second = precompute_seconds(model, data, tmp / "second", tmp / "cache", args.shape)
    print(f"{args.clips} clips at {args.shape}, tiny 5b model")
    print(f"first run precompute:  {first:7.3f} s (encodes every caption and clip)")
    print(f"second run precompute: {second:7.3f} s (reads the cache)")
    print(f"precompute_second_over_first: {second / first:.3f}")


if __name__ == "__main__":
    main()
