"""Tiny random CogVideoX checkpoints in the real diffusers folder layout.

Tests, the demo and the benchmarks train on these instead of downloading 10-20 GB: every
component is random (seeded, so two builds are identical) and small enough that a training step
takes milliseconds on a CPU, yet each variant keeps its family's architecture:

- `2b`:  sincos positional embeddings, no rotary (like THUDM/CogVideoX-2b);
- `5b`:  rotary embeddings (like THUDM/CogVideoX-5b);
- `1.5`: rotary embeddings and a temporal patch of 2 (like THUDM/CogVideoX1.5-5B);
- `5b-i2v`: image-to-video, with learned positional embeddings for its one sample shape, 9x32x32
  (like THUDM/CogVideoX-5b-I2V at 49x480x720);
- `1.5-i2v`: image-to-video with the `ofs` embedding, a temporal patch of 2 and a VAE whose image
  latents are scaled inversely (like THUDM/CogVideoX1.5-5B-I2V).

    python -m core.tiny OUT --variant 5b
    python -m core.tiny OUT --variant captioner   (a tiny Qwen3-VL: core/tiny_captioner.py)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.models.cogvideox_tiny import I2V_VARIANTS, SCALING_FACTOR, VARIANTS

__all__ = [
    "I2V_VARIANTS",
    "SCALING_FACTOR",
    "VARIANTS",
    "build_tiny_checkpoint",
    "build_tiny_pipeline",
]


def build_tiny_pipeline(variant: str = "5b", seed: int = 0):
    """A diffusers pipeline with tiny random components of the given variant."""
    from core.models.cogvideox_tiny import build_tiny_pipeline as build

    return build(variant, seed)


def build_tiny_checkpoint(out_dir: str | Path, variant: str = "5b", seed: int = 0) -> Path:
    """Build and save a tiny checkpoint to `out_dir` (model_index.json and one folder each)."""
    out_dir = Path(out_dir)
    build_tiny_pipeline(variant, seed).save_pretrained(out_dir)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.tiny", description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder to write the checkpoint to")
    parser.add_argument("--variant", choices=[*VARIANTS, *I2V_VARIANTS, "captioner"], default="5b")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.variant == "captioner":
        from core.tiny_captioner import build_tiny_captioner

        print(build_tiny_captioner(args.out, args.seed))
        return 0
    path = build_tiny_checkpoint(args.out, args.variant, args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
