"""What the trainer costs on top of the bare maths of a step.

On the tiny 5b variant at a shape where a bare step takes well over 20 ms, time N optimizer steps
of the real trainer (`core.train.main`, precomputed conditions, events on, no checkpoints or
validation) against a bare loop over the same model, the same precomputed tensors and the same
optimizer. Rounds alternate between the two so drift in machine load hits both alike.

    python bench/train_overhead.py [--steps 40] [--rounds 3] [--threads 1]

One torch thread by default: on a 2-core machine two threads per loop turn every other process's
activity into +-20% swings between rounds, which buries a difference of a few percent.

Last line: `train_overhead: <trainer seconds per step / bare seconds per step>`.
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

BUCKET = (25, 192, 256)  # 7 latent frames x 24 x 32: 1344 video tokens


def trainer_seconds_per_step(model: Path, data: Path, out: Path, steps: int) -> float:
    from core.events import read_events
    from core.train import main

    argv = [
        "--pretrained_model_name_or_path",
        str(model),
        "--data_root",
        str(data),
        "--video_resolution_buckets",
        "x".join(map(str, BUCKET)),
        "--precompute_conditions",
        "--train_steps",
        str(steps),
        "--rank",
        "16",
        "--lora_alpha",
        "16",
        "--lr",
        "1e-4",
        "--optimizer",
        "adamw",
        "--transformer_dtype",
        "fp32",
        "--seed",
        "0",
        "--checkpointing_steps",
        str(steps + 1),
        "--output_dir",
        str(out),
    ]
    if main(argv) != 0:
        raise SystemExit("the trainer failed; see its messages above")
    times = [e.time for e in read_events(out / "events.jsonl") if e.kind == "step"]
    # Steps after the first few: the first ones warm allocator caches.
    warm = times[5:]
    return (warm[-1] - warm[0]) / (len(warm) - 1)


def bare_seconds_per_step(model: Path, data: Path, steps: int) -> float:
    """The same maths with nothing around it: no accelerate, events, timing or checks."""
    import torch
    from peft import LoraConfig

    from core.config import make_config
    from core.data.dataset import load_clip, prepare_samples
    from core.models.registry import identify, open_family
    from core.models.source import ModelSource

    family = open_family(identify(ModelSource(str(model))))

    prepared = prepare_samples(
        make_config(
            {
                "data_root": str(data),
                "cache_dir": str(data / ".cache"),
                "video_resolution_buckets": ["x".join(map(str, BUCKET))],
            }
        )
    )
    tokenizer = family.load_tokenizer()
    text_encoder = family.load_text_encoder(torch.float32)
    vae = family.load_vae(torch.float32)
    device = torch.device("cpu")
    embeds = [
        family.encode_prompts(tokenizer, text_encoder, [s.caption], device)[0]
        for s in prepared.samples
    ]
    media = [family.encode_media(vae, load_clip(s).unsqueeze(0)) for s in prepared.samples]
    transformer = family.load_transformer(torch.float32)
    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=16,
            lora_alpha=16,
            init_lora_weights=True,
            target_modules=["to_q", "to_k", "to_v", "to_out.0"],
        )
    )
    transformer.train()
    parameters = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=1e-4
    )
    loss_fn = family.loss_function(
        family.load_scheduler(), transformer.config, device, torch.float32
    )
    generator = torch.Generator().manual_seed(0)
    stamps = []
    for step in range(steps):
        index = step % len(media)
        conditions = {"prompt_embeds": embeds[index][None], **media[index]}
        loss = loss_fn(transformer, conditions, [generator])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        stamps.append(time.perf_counter())
    warm = stamps[5:]
    return (warm[-1] - warm[0]) / (len(warm) - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)

    from core.data.synthetic import make_reference_dataset
    from core.tiny import build_tiny_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_checkpoint(tmp / "tiny-5b", "5b")
        frames, height, width = BUCKET
        data = make_reference_dataset(
            tmp / "data", count=2, frames=frames, height=height, width=width
        )
        bare, trainer = [], []
        for round_index in range(args.rounds):
            bare.append(bare_seconds_per_step(model, data, args.steps))
            trainer.append(
                trainer_seconds_per_step(model, data, tmp / f"run-{round_index}", args.steps)
            )
            print(
                f"round {round_index + 1}: bare {bare[-1] * 1000:.1f} ms/step, "
                f"trainer {trainer[-1] * 1000:.1f} ms/step",
                flush=True,
            )
    bare_step, trainer_step = statistics.median(bare), statistics.median(trainer)
    print(f"bare loop: {bare_step * 1000:.1f} ms/step (median of {args.rounds})")
    print(f"trainer:   {trainer_step * 1000:.1f} ms/step (median of {args.rounds})")
    print(f"train_overhead: {trainer_step / bare_step:.3f}")


if __name__ == "__main__":
    main()
