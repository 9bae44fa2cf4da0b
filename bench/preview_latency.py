"""Time to the first denoising step of a preview: cold (the worker loads the base) against warm
(the base already loaded, only the LoRA swapped), measured side by side in one process.

    python bench/preview_latency.py [--repeats 3]

Last line: `preview_first_step_warm_over_cold: <warm / cold>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from core.data.synthetic import make_reference_dataset
    from core.infer import PipelineCache, generate
    from core.preview_protocol import LoraChoice, PreviewRequest
    from core.tiny import build_tiny_checkpoint
    from core.train import main as train

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_checkpoint(tmp / "tiny-5b", "5b")
        data = make_reference_dataset(tmp / "data", count=2)
        loras = []
        for number in range(2):
            out = tmp / f"lora-{number}"
            train(
                [
                    "--pretrained_model_name_or_path",
                    str(model),
                    "--data_root",
                    str(data),
                    "--video_resolution_buckets",
                    "9x32x32",
                    "--train_steps",
                    "2",
                    "--output_dir",
                    str(out),
                    "--cache_dir",
                    str(tmp / "cache"),
                    "--seed",
                    str(number),
                ]
            )
            loras.append(out)
        cold, warm = [], []
        for repeat in range(args.repeats):
            cache = PipelineCache()  # a fresh worker: it must load the base
            for number, lora in enumerate(loras):
                request = PreviewRequest(
                    base=str(model),
                    loras=[LoraChoice(path=str(lora))],
                    prompt="a square",
                    frames=9,
                    height=32,
                    width=32,
                    steps=2,
                    dtype="fp32",
                )
                result = generate(request, cache, tmp / f"out-{repeat}-{number}.mp4")
                (cold if number == 0 else warm).append(result.first_step_seconds)
    print(f"time to first denoising step, median of {args.repeats}:")
    print(f"cold (loads the base):       {statistics.median(cold) * 1000:8.1f} ms")
    print(f"warm (swaps the LoRA only):  {statistics.median(warm) * 1000:8.1f} ms")
    ratio = statistics.median(warm) / statistics.median(cold)
    print(f"preview_first_step_warm_over_cold: {ratio:.3f}")


if __name__ == "__main__":
    main()
