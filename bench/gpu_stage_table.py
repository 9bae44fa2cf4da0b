"""The reference's memory stage table, seconds per step and TFLOP/s, for each speed/memory option.

Builds a CogVideoX checkpoint with random weights (full size: the real architectures of
CogVideoX-2b / 5b / 1.5-5B, T5-XXL and the VAE, written once to --workdir; tiny: core/tiny.py),
writes one random clip of the reference shape, and runs the real trainer (`python -m
core.train`, one fresh process a configuration so each memory peak is its own) for the
reference's LoRA (rank 128, batch 1, gradient checkpointing, precomputed conditions) and
its full finetune (the "2-5b-lora" and "4-5b-full-finetune" presets hold the reference's
settings: 8-bit AdamW, slicing and tiling); then once more for each option. Every run
encodes its clip and prompt itself, as the reference's did, so its table holds the encoders'
peaks too.

    python bench/gpu_stage_table.py                        # 5b LoRA and full finetune on cuda
    python bench/gpu_stage_table.py --family 2b 5b 1.5 --options fp8 offload+expandable compile
    python bench/gpu_stage_table.py --device cpu --scale tiny   # the script's own test

Options (each one change to the baseline; `a+b` applies both): fp8 (frozen weights stored in
float8), adamw (torch's AdamW instead of the reference's 8-bit AdamW), compile (regional
torch.compile), attention=fastest|flash|cudnn|efficient|math, checkpointing=RATIO,
no-checkpointing, fused / foreach (torch AdamW kernels), logging=N (read the loss every N steps),
expandable (CUDA expandable segments), pinned (pinned-memory latents), offload (checkpointed
blocks' inputs kept in CPU memory), rank=R, launch=CONFIG (started by `accelerate launch` with
assets/accelerate/CONFIG.yaml on --processes GPUs: deepspeed_zero2_offload, fsdp, ...).

FLOPs are the model's: 3x the forward pass's matrix products (no recomputation counted), from
the architecture and the bucket. The fraction of peak uses the GPU's dense bf16 rate (a table of
known GPUs, or --peak-tflops).

Last line: `step_seconds_<family>_<training>: <baseline seconds per optimizer step>` for the
first family and training type.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The reference's measured table (GB), 5B at 49x480x720, batch 1, precomputed.
REFERENCE_STAGES = {
    "lora": {
        "after precomputing conditions": (8.880, 8.941),
        "after precomputing latents": (9.300, 12.441),
        "before training start": (10.622, 20.701),
        "after epoch 1": (11.145, 20.701),
        "before validation start": (11.145, 20.702),
        "after validation end": (11.145, 28.324),
        "after training end": (11.144, 11.592),
    },
    "full-finetune": {
        "after precomputing conditions": (8.880, 8.941),
        "after precomputing latents": (9.300, 12.441),
        "before training start": (10.376, 10.387),
        "after epoch 1": (31.160, 52.939),
        "before validation start": (31.161, 52.939),
        "after validation end": (31.161, 52.939),
        "after training end": (31.160, 34.295),
    },
}

# Dense bf16 tensor-core TFLOP/s by the name the driver reports (first match wins).
PEAK_BF16_TFLOPS = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.4),
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L40", 181.0),
    ("RTX 6000 Ada", 364.2),
    ("A6000", 154.8),
    ("RTX 4090", 165.2),
    ("A10G", 70.0),
    ("A10", 125.0),
]

# One change to the reference's settings each (TrainConfig fields); `a+b` combines options.
OPTIONS = {
    "fp8": {"layerwise_upcasting_modules": ["transformer"]},
    "adamw": {"use_8bit_bnb": False},  # torch's AdamW (fp32 states) instead of 8-bit AdamW
    "compile": {"compile_transformer_blocks": True},
    "fused": {"optimizer_implementation": "fused", "use_8bit_bnb": False},
    "foreach": {"optimizer_implementation": "foreach", "use_8bit_bnb": False},
    "expandable": {"expandable_segments": True},
    "pinned": {"pin_memory": True},
    "offload": {"offload_activations": True},
    "no-checkpointing": {"gradient_checkpointing": False},
}
PARAMETRIC_OPTIONS = {
    "attention": lambda value: {"attention_backend": value},
    "checkpointing": lambda value: {"gradient_checkpointing_ratio": float(value)},
    "logging": lambda value: {"logging_steps": int(value)},
    "rank": lambda value: {"rank": int(value), "lora_alpha": int(value)},
}
TRAINING_TYPES = {"lora": "lora", "full": "full-finetune"}
# The reference guide's command as its presets hold it (5B, 49x480x720, 8-bit AdamW).
REFERENCE_PRESETS = {"lora": "2-5b-lora.json", "full": "4-5b-full-finetune.json"}
PRESETS = ROOT / "assets" / "presets"


def option_settings(name: str) -> dict:
    """The settings an option (or options joined by +) changes; launch=CONFIG changes none."""
    settings: dict = {}
    for part in name.split("+"):
        if part in ("", "baseline") or part.startswith("launch="):
            continue
        key, _, value = part.partition("=")
        if part in OPTIONS:
            settings.update(OPTIONS[part])
        elif key in PARAMETRIC_OPTIONS and value:
            settings.update(PARAMETRIC_OPTIONS[key](value))
        else:
            known = [*OPTIONS, *(f"{k}=VALUE" for k in PARAMETRIC_OPTIONS), "launch=CONFIG"]
            raise SystemExit(f"error: unknown option {part!r}; known: {', '.join(known)}")
    return settings


def settings_flags(settings: dict) -> list[str]:
    """Trainer flags for TrainConfig settings."""
    flags: list[str] = []
    for name, value in settings.items():
        if isinstance(value, bool):
            flags.append(f"--{name}" if value else f"--no-{name}")
        elif isinstance(value, list):
            flags += [f"--{name}", *map(str, value)]
        elif value is not None:
            flags += [f"--{name}", str(value)]
    return flags


def option_flags(name: str) -> list[str]:
    return settings_flags(option_settings(name))


def reference_settings(training: str) -> dict:
    """The reference command's settings for `lora` or `full`, as its preset holds them."""
    preset = json.loads((PRESETS / REFERENCE_PRESETS[training]).read_text())
    return dict(preset["train"])


ACCELERATE_CONFIGS = ROOT / "assets" / "accelerate"


def launcher(name: str, processes: int) -> list[str]:
    """How a run starts: plain Python, or `accelerate launch` with one of assets/accelerate/
    (`launch=deepspeed_zero2_offload` ...), on `processes` GPUs (one process covers a backend's
    code paths; sharding's savings need several)."""
    launch = next((part for part in name.split("+") if part.startswith("launch=")), None)
    if launch is None:
        return [sys.executable]
    config = ACCELERATE_CONFIGS / f"{launch.partition('=')[2]}.yaml"
    if not config.is_file():
        known = ", ".join(sorted(path.stem for path in ACCELERATE_CONFIGS.glob("*.yaml")))
        raise SystemExit(f"error: no accelerate config {config.name}; known: {known}")
    from jobs.spec import accelerate_executable

    return [
        accelerate_executable(),
        "launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
    ]


# ---- the random checkpoint ---------------------------------------------------------------------


def full_size_transformer_config(family: str) -> dict:
    """The real architectures (STACK.md); diffusers' defaults are CogVideoX-2b's."""
    config = {}
    if family in ("5b", "1.5", "5b-i2v", "1.5-i2v"):
        config.update(num_attention_heads=48, num_layers=42, use_rotary_positional_embeddings=True)
    if family in ("1.5", "1.5-i2v"):
        config.update(patch_size_t=2, patch_bias=False, sample_height=300, sample_width=300)
        config.update(sample_frames=81)
    if family == "5b-i2v":  # the image's latents double the input channels
        config.update(in_channels=32, use_learned_positional_embeddings=True)
    if family == "1.5-i2v":
        config.update(in_channels=32, ofs_embed_dim=512)
    return config


# T5-XXL as CogVideoX uses it (4.8B parameters); diffusers' VAE defaults are CogVideoX's VAE.
T5_XXL = {
    "vocab_size": 32128,
    "d_model": 4096,
    "d_kv": 64,
    "d_ff": 10240,
    "num_layers": 24,
    "num_heads": 64,
    "feed_forward_proj": "gated-gelu",
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
VAE_FULL_SIZE: dict = {}


def _random_bf16(device: str, build):
    """`build()` with bf16 parameters created directly on `device` (fast on a GPU)."""
    import torch

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            return build()
    finally:
        torch.set_default_dtype(previous)


def shared_text_encoder(folder: Path, device: str) -> Path:
    """A random T5-XXL encoder (4.8B parameters), written once and shared by every family."""
    from transformers import T5Config, T5EncoderModel

    if not (folder / "config.json").exists():
        config = T5Config(**T5_XXL)
        encoder = _random_bf16(device, lambda: T5EncoderModel(config))
        partial = folder.with_name(folder.name + ".partial")
        encoder.save_pretrained(partial)
        partial.replace(folder)
    return folder


def build_full_size_checkpoint(folder: Path, family: str, device: str) -> Path:
    """The family's folder layout (from a tiny checkpoint) with full-size random components."""
    import shutil

    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel

    from core.tiny import SCALING_FACTOR, build_tiny_checkpoint

    if (folder / "model_index.json").exists():
        return folder
    print(f"Building a random full-size {family} checkpoint in {folder} ...", flush=True)
    text_encoder = shared_text_encoder(folder.parent / "random-t5-xxl", device)
    partial = build_tiny_checkpoint(folder.with_name(folder.name + ".partial"), family)
    for component in ("transformer", "vae", "text_encoder"):
        shutil.rmtree(partial / component)
    transformer_config = full_size_transformer_config(family)
    _random_bf16(device, lambda: CogVideoXTransformer3DModel(**transformer_config)).save_pretrained(
        partial / "transformer"
    )
    vae_config = {**VAE_FULL_SIZE, "scaling_factor": SCALING_FACTOR[family]}
    _random_bf16(device, lambda: AutoencoderKLCogVideoX(**vae_config)).save_pretrained(
        partial / "vae"
    )
    (partial / "text_encoder").symlink_to(text_encoder.resolve(), target_is_directory=True)
    partial.replace(folder)
    if device == "cuda":
        torch.cuda.empty_cache()
    return folder


def model_for(family: str, scale: str, device: str, workdir: Path) -> Path:
    if scale == "tiny":
        from core.tiny import build_tiny_checkpoint

        folder = workdir / f"tiny-{family}"
        if not (folder / "model_index.json").exists():
            build_tiny_checkpoint(folder, family)
        return folder
    return build_full_size_checkpoint(workdir / f"random-full-{family}", family, device)


def dataset_for(bucket: tuple[int, int, int], workdir: Path) -> Path:
    from core.data.synthetic import make_reference_dataset

    folder = workdir / "data-{}x{}x{}".format(*bucket)
    if not (folder / "videos.txt").exists():
        make_reference_dataset(folder, count=1, frames=bucket[0], height=bucket[1], width=bucket[2])
    return folder


# ---- FLOPs -------------------------------------------------------------------------------------


def forward_flops(transformer: dict, video_tokens: int, batch: int = 1) -> float:
    """Matrix-product FLOPs of one transformer forward pass over a clip's tokens."""
    tokens = video_tokens + transformer["max_text_seq_length"]
    dim = transformer["num_attention_heads"] * transformer["attention_head_dim"]
    projections = 4 * 2 * tokens * dim * dim  # q, k, v, out
    feed_forward = 2 * 2 * tokens * dim * 4 * dim  # dim -> 4 dim -> dim
    attention = 2 * 2 * tokens * tokens * dim  # scores and weighted sum
    return batch * transformer["num_layers"] * (projections + feed_forward + attention)


def peak_tflops(device_name: str, override: float | None) -> float | None:
    if override:
        return override
    for name, tflops in PEAK_BF16_TFLOPS:
        if name.lower() in device_name.lower():
            return tflops
    return None


# ---- one run -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    label: str
    code: int
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    step_seconds: float | None = None
    trainable: int | None = None
    message: str = ""

    def record(
        self, family: str, training: str, scale: str, bucket, device: str, flops: float
    ) -> dict:
        """What a results file keeps of this run."""
        seconds = self.step_seconds
        return {
            "family": family,
            "scale": scale,
            "training": training,
            "options": self.label,
            "bucket": "x".join(map(str, bucket)),
            "device": device,
            "exit": self.code,
            "message": self.message,
            "stages": self.stages,
            "step_seconds": seconds,
            "tflops": flops / seconds / 1e12 if seconds else None,
        }


def reference_flags(
    model: Path, data: Path, bucket, training: str, steps: int, out: Path, cache: Path
) -> list[str]:
    """The reference's settings at benchmark length: train, then one short validation."""
    settings = reference_settings("lora" if training == "lora" else "full")
    settings.update(
        pretrained_model_name_or_path=str(model),
        data_root=str(data),
        video_resolution_buckets=["x".join(map(str, bucket))],
        seed=42,
        train_steps=steps,
        checkpointing_steps=steps + 1,
        max_grad_norm=1.0,
        validation_prompts=["a random benchmark prompt"],
        validation_inference_steps=2,
        output_dir=str(out),
        cache_dir=str(cache),
    )
    return settings_flags(settings)


def run_trainer(
    label: str, flags: list[str], device: str, warmup: int, start: list[str]
) -> RunResult:
    from core.events import read_events

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    out = Path(flags[flags.index("--output_dir") + 1])
    completed = subprocess.run(
        [*start, "-m", "core.train", *flags],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    result = RunResult(label, completed.returncode)
    events = read_events(out / "events.jsonl") if (out / "events.jsonl").exists() else []
    for event in events:
        if event.kind == "stage":
            result.stages.setdefault(event.stage, event.memory)
        elif event.kind == "config":
            result.trainable = event.training_configuration["trainable parameters"]
        elif event.kind == "failed":
            result.message = event.message
    times = [e.step_seconds for e in events if e.kind == "step"][warmup:]
    if times:
        result.step_seconds = statistics.median(times)
    if completed.returncode and not result.message:
        result.message = (completed.stderr.strip().splitlines() or ["no output"])[-1]
    return result


# ---- the report --------------------------------------------------------------------------------


def _gb(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def stage_table(results: list[RunResult], training: str, device: str) -> list[str]:
    """Stage rows; columns: the reference's figures (on CUDA), then each run's."""
    keys = ("memory_allocated", "max_memory_reserved") if device == "cuda" else ("rss", "peak_rss")
    header = ["stage"]
    if device == "cuda":
        header += ["reference alloc", "reference max reserved"]
    header += [f"{r.label} {'alloc' if k == keys[0] else 'max'}" for r in results for k in keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    stages = list(dict.fromkeys(stage for r in results for stage in r.stages))  # as emitted
    for stage in stages:
        row = [stage]
        if device == "cuda":
            reference = REFERENCE_STAGES[training].get(stage, (None, None))
            row += [_gb(reference[0]), _gb(reference[1])]
        for result in results:
            memory = result.stages.get(stage, {})
            row += [_gb(memory.get(key)) for key in keys]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def summary_table(results: list[RunResult], flops: float, peak: float | None, device: str):
    key = "max_memory_reserved" if device == "cuda" else "peak_rss"
    baseline = results[0]
    lines = [
        "| run | s/step | vs baseline | TFLOP/s | of peak | max before validation (GB) "
        "| after validation (GB) | status |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for result in results:
        seconds = result.step_seconds
        tflops = flops / seconds / 1e12 if seconds else None
        ratio = seconds / baseline.step_seconds if seconds and baseline.step_seconds else None
        # Peaks are running maxima: the stage before validation holds all of training's.
        before = result.stages.get("before validation start", {}).get(key)
        after = result.stages.get("after validation end", {}).get(key)
        lines.append(
            "| "
            + " | ".join(
                [
                    result.label,
                    "-" if seconds is None else f"{seconds:.3f}",
                    "-" if ratio is None else f"{ratio:.2f}",
                    "-" if tflops is None else f"{tflops:.3g}",
                    "-" if tflops is None or not peak else f"{tflops / peak:.1%}",
                    _gb(before),
                    _gb(after),
                    "ok" if result.code == 0 else f"failed: {result.message}",
                ]
            )
            + " |"
        )
    return lines


def device_name(device: str) -> str:
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--scale", choices=("full", "tiny"), default="full")
    parser.add_argument("--family", nargs="+", choices=("2b", "5b", "1.5"), default=["5b"])
    parser.add_argument("--training", nargs="+", choices=tuple(TRAINING_TYPES), default=None)
    parser.add_argument("--options", nargs="*", default=["fp8", "adamw", "compile"])
    parser.add_argument(
        "--skip-baseline", action="store_true", help="run only the options, not the baseline"
    )
    parser.add_argument("--bucket", default=None, help="FxHxW (default 49x480x720; tiny 9x32x32)")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps a run")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of s/step")
    parser.add_argument("--processes", type=int, default=1, help="GPUs for launch=CONFIG runs")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the random checkpoints")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help="append each run's figures to this JSON-lines file",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for option in args.options:
        option_settings(option)  # an unknown option fails before anything is built

    from core.config import parse_bucket
    from core.models.registry import identify
    from core.models.source import ModelSource

    bucket = parse_bucket(args.bucket or ("49x480x720" if args.scale == "full" else "9x32x32"))
    trainings = args.training or list(TRAINING_TYPES)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("error: no CUDA GPU here; run with --device cpu --scale tiny")
    workdir = args.workdir or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "cogvideox-studio", "bench"
    )
    workdir.mkdir(parents=True, exist_ok=True)
    name = device_name(args.device)
    peak = peak_tflops(name, args.peak_tflops) if args.device == "cuda" else args.peak_tflops
    data = dataset_for(bucket, workdir)
    print(f"# Stage table on {name}; bucket {'x'.join(map(str, bucket))}, scale {args.scale}")
    headline = None
    for family in args.family:
        model = model_for(family, args.scale, args.device, workdir)
        transformer = json.loads((model / "transformer" / "config.json").read_text())
        tokens = identify(ModelSource(str(model))).rules.video_tokens(*bucket)
        flops = 3 * forward_flops(transformer, tokens)
        for training_key in trainings:
            training = TRAINING_TYPES[training_key]
            labels = [] if args.skip_baseline else ["baseline"]
            labels += [o for o in args.options if training == "lora" or "fp8" not in o.split("+")]
            if not labels:
                continue
            results = []
            for label in labels:
                with tempfile.TemporaryDirectory(dir=workdir) as scratch:
                    scratch = Path(scratch)
                    flags = reference_flags(
                        model, data, bucket, training, args.steps, scratch / "out", scratch / "c"
                    )
                    flags += option_flags(label)
                    if args.device == "cpu":
                        flags += ["--transformer_dtype", "fp32", "--vae_dtype", "fp32"]
                        flags += ["--text_encoder_dtype", "fp32"]
                    start = launcher(label, args.processes)
                    results.append(run_trainer(label, flags, args.device, args.warmup, start))
                    print(f"  ran {family} {training_key} {label}: exit {results[-1].code}")
                if args.results:
                    record = results[-1].record(
                        family, training_key, args.scale, bucket, name, flops
                    )
                    with args.results.open("a", encoding="utf-8") as file:
                        file.write(json.dumps(record) + "\n")
            print(f"\n## {family} {training}: {flops:.3g} FLOP a step (3x forward)\n")
            print("\n".join(stage_table(results, training, args.device)))
            print()
            print("\n".join(summary_table(results, flops, peak, args.device)))
            if headline is None and results[0].step_seconds is not None:
                headline = (f"step_seconds_{family}_{training_key}", results[0].step_seconds)
    if headline is None:
        print("step_seconds: failed")
        return 1
    print(f"{headline[0]}: {headline[1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
