"""Time to the first denoising step of a preview: cold (the worker must load the base) against
warm (the base already loaded, only the LoRA swapped), measured side by side in one run.

On the tiny 5b variant, at a shape where one denoising step takes tens of milliseconds on a CPU
(so "warm" is a step, not timer noise), each round starts a fresh PipelineCache, as a freshly
started worker has: its first request loads the base and LoRA A (cold), its second swaps in
LoRA B on the same base (warm). Both go through `core.infer.generate`, the worker's own path,
timed from the call to the end of the first denoising step (the pipeline's step-end callback),
where the preview is cut short. A third request repeats LoRA B with nothing to load: the
step itself, so the swap's own cost is the difference.

    python bench/preview_latency.py [--rounds 5] [--frames 25 --height 192 --width 256]
                                    [--threads 1]

One torch thread by default: on a 2-core machine two threads turn any other process's activity
into swings of several times a step's length (threads waiting on each other), which buries the
difference being measured.

On a real 5B base the load is tens of seconds against a step of a few, so the ratio here (a tiny
base that loads in well under a second) understates what the warm worker saves.

Last line: `preview_first_step_warm_over_cold: <median warm / median cold>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class _FirstStepDone(Exception):
    """Raised from the first step's callback: the rest of the preview (more steps, decoding
    and writing the mp4) is not what is measured, and would dominate the run time."""


def stop() -> None:
    raise _FirstStepDone


def train_loras(model: Path, data: Path, root: Path, count: int) -> list[Path]:
    """`count` distinct LoRAs of the tiny model: a few steps each, different seeds."""
    from core.train import main as train

    loras = []
    for number in range(count):
        out = root / f"lora-{number}"
        argv = [
            "--pretrained_model_name_or_path",
            str(model),
            "--data_root",
            str(data),
            "--video_resolution_buckets",
            "9x32x32",
            "--precompute_conditions",
            "--train_steps",
            "3",
            "--lr",
            "1e-3",
            "--transformer_dtype",
            "fp32",
            "--seed",
            str(number),
            "--checkpointing_steps",
            "1000",
            "--output_dir",
            str(out),
        ]
        if train(argv) != 0:
            raise SystemExit("training a LoRA failed; see its messages above")
        loras.append(out)
    return loras


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="cold/warm pairs after the first")
    parser.add_argument("--frames", type=int, default=25)
    parser.add_argument("--height", type=int, default=192)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()

    import torch

    from core.data.synthetic import make_reference_dataset
    from core.infer import PipelineCache, generate
    from core.preview_protocol import LoraChoice, PreviewRequest
    from core.tiny import build_tiny_checkpoint

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = build_tiny_checkpoint(root / "tiny-5b", "5b")
        data = make_reference_dataset(root / "data", count=2)
        loras = train_loras(model, data, root, count=2)

        def first_step(cache: PipelineCache, lora: Path, name: str) -> float:
            request = PreviewRequest(
                base=str(model),
                loras=[LoraChoice(path=str(lora))],
                prompt="a square moving across the frame",
                frames=args.frames,
                height=args.height,
                width=args.width,
                steps=2,
                dtype="fp32",
            )
            started = time.perf_counter()
            try:
                generate(request, cache, root / "out" / f"{name}.mp4", on_first_step=stop)
            except _FirstStepDone:
                return time.perf_counter() - started
            raise SystemExit("the preview finished without reporting its first step")

        # Not counted: the process's first preview may pay lazy imports and allocator warm-up.
        first_cache = PipelineCache(device="cpu")
        first_step(first_cache, loras[0], "warm-up")
        cold, warm, again = [], [], []
        for number in range(args.rounds):
            cache = PipelineCache(device="cpu")  # a freshly started worker: nothing loaded
            cold.append(first_step(cache, loras[0], f"cold-{number}"))
            warm.append(first_step(cache, loras[1], f"warm-{number}"))
            again.append(first_step(cache, loras[1], f"again-{number}"))
            assert cache.base_loads == 1, "a warm request reloaded the base"

    def row(label: str, seconds: list[float]) -> str:
        each = ", ".join(f"{s * 1000:.0f}" for s in seconds)
        return f"  {label:<40} {statistics.median(seconds) * 1000:8.1f} ms   ({each})"

    shape = f"{args.frames}x{args.height}x{args.width}"
    print(f"tiny 5b, {shape}, 2 steps, fp32 on the CPU, torch threads {torch.get_num_threads()}")
    print(f"time to the end of the first denoising step, median of {args.rounds} rounds:")
    print(row("cold (loads the base, then LoRA A)", cold))
    print(row("warm (base kept, swaps in LoRA B)", warm))
    print(row("warm, same LoRA again (nothing loaded)", again))
    ratio = statistics.median(warm) / statistics.median(cold)
    print(f"preview_first_step_warm_over_cold: {ratio:.3f}")


if __name__ == "__main__":
    main()
