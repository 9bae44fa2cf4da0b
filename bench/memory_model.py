"""The reference's memory stage table, predicted on a CPU: the trainer's own run on fake tensors.

    python bench/memory_model.py --family 5b --training lora     # the recommended options
    python bench/memory_model.py --configs reference recommended --options fp8+offload
    python bench/memory_model.py --family 1.5 --training full
    python bench/memory_model.py --write-figures   # presets' and the Launch group's figures

Each configuration runs `bench/memory_stages.py`: the models built full size from the real
configs (STACK.md "Real architectures"; no weights, no download) under torch's FakeTensorMode,
then the run's stages as the trainer takes them, the device's live bytes counted at every
moment. The table shows, per stage, the reference's figures (allocated, max reserved) beside
the predicted allocated memory at the stage and at most since the previous stage, and the
predicted max reserved memory (the allocation trace replayed through the CUDA caching
allocator's rules, core/caching_allocator.py), all in GB of 1024**3 bytes.

Configurations: `reference` is the reference guide's command (the "2-5b-lora" and
"4-5b-full-finetune" presets hold it); `recommended` adds RECOMMENDED_OPTIONS; `--options a+b`
adds one more from bench/gpu_stage_table.py's options (fp8, offload, expandable,
checkpointing=R, attention=B, no-checkpointing, adamw for torch's AdamW, rank=R ...).

Last line: `predicted_peak_gb_<family>_<training>: <GB>`, the predicted max reserved memory
while training under the recommended options.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from gpu_stage_table import (  # noqa: E402  (the reference's table, settings and options)
    REFERENCE_STAGES,
    TRAINING_TYPES,
    option_settings,
    reference_settings,
)

GB = 1024**3
MiB = 1024**2
FIGURES = ROOT / "assets" / "memory" / "predicted.json"

# ---- what a fake tensor cannot see ----------------------------------------------------------

# The CUDA context (driver state, the kernels torch loads) takes this much of the GPU outside
# torch's allocator, so neither memory_allocated nor max_memory_reserved shows it; a GPU needs
# it free on top of them. About 0.5-0.6 GB for torch 2.x on an H100 with lazy module loading.
CUDA_CONTEXT_GB = 0.6
# cuBLAS's workspace: torch gives each thread that runs matrix products (the main one and
# autograd's backward thread) 32 MiB on Hopper through its allocator, from the first product on.
CUBLAS_WORKSPACES = (32 * MiB, 32 * MiB)
# cuDNN's scratch space for the VAE's 3D convolutions depends on the algorithm it picks at run
# time: an allowance per 3D convolution, freed when it returns (not yet measured on a GPU).
CUDNN_CONV3D_WORKSPACE = 256 * MiB
# Allocator rounding (512-byte blocks, 2 and 20 MiB segments) and the fragmentation between
# allocated and reserved are not constants: core/caching_allocator.py replays the run's
# allocations through the caching allocator's rules.

# Which SDPA kernel torch runs on the GPU for each --attention_backend, for bf16 at head dim 64
# on sm80+ (the CPU would run its own kernel, with other saved tensors).
GPU_ATTENTION = {
    "auto": "flash",
    "fastest": "flash",
    "flash": "flash",
    "cudnn": "cudnn",
    "efficient": "efficient",
    "math": "math",
}
# torch's AdamW on CUDA with no implementation named is the foreach one, which holds temporary
# copies of the states; fused has no temporaries, like the for-loop one.
GPU_OPTIMIZER_IMPLEMENTATION = {
    "auto": "foreach",
    "foreach": "foreach",
    "fused": "for-loop",
    "for-loop": "for-loop",
}

# ---- the configurations ---------------------------------------------------------------------

# The options that bring the 5B LoRA under 16 GB reserved while training and 20 GB through
# validation (the README's Memory section): the checkpointed blocks' inputs wait in CPU memory,
# and the allocator grows its segments in place rather than stranding freed blocks.
RECOMMENDED_OPTIONS = "offload+expandable"
# Each family's usual size: CogVideoX-2b and -5b were trained at 49x480x720, the 1.5 at 81x768x1360.
FAMILY_BUCKETS = {"2b": "49x480x720", "5b": "49x480x720", "1.5": "81x768x1360"}
# The image-to-video variants, at the sizes their released checkpoints were trained at.
I2V_BUCKETS = {"5b-i2v": "49x480x720", "1.5-i2v": "81x768x1360"}

GOALS_GB = {
    ("5b", "lora"): {"training": 16.0, "through validation": 20.0},
    ("5b", "lora", "fp8"): {"training": 11.0},
    ("5b", "full"): {"training": 45.0},
}


# Beside an image-to-video model's configs: the image its validation video starts from (the
# fake clips have no first frame to read).
VALIDATION_IMAGE = "validation.png"


def make_train_config(model: Path, bucket: str, settings: dict, options: str = ""):
    """A TrainConfig for `settings` changed by `options` (a+b), on `model`, one validation
    video, with the optimizer implementation a GPU would run."""
    from core.config import make_config

    merged = {**settings, **option_settings(options)}
    merged.update(
        pretrained_model_name_or_path=str(model),
        data_root=str(model),
        video_resolution_buckets=[bucket],
        validation_prompts=["a validation prompt"],
    )
    if (model / VALIDATION_IMAGE).is_file():  # an image-to-video model starts from an image
        merged["validation_images"] = [str(model / VALIDATION_IMAGE)]
    merged.setdefault("seed", 42)  # no effect on memory; a run without one would draw it
    config = make_config(merged)
    return make_config({**config.model_dump(), **optimizer_on_gpu(config)})


# ---- the model's configs --------------------------------------------------------------------


def config_checkpoint(folder: Path, family: str) -> Path:
    """A checkpoint folder with the family's full-size configs and no weights (kilobytes)."""
    import shutil

    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel
    from gpu_stage_table import T5_XXL, VAE_FULL_SIZE, full_size_transformer_config
    from transformers import T5Config

    from core.tiny import SCALING_FACTOR, build_tiny_checkpoint

    if (folder / "model_index.json").exists():
        return folder
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # what an interrupted build left
    build_tiny_checkpoint(partial, family)  # the tokenizer, scheduler and folder layout
    for component in ("transformer", "vae", "text_encoder"):
        for weights in (partial / component).glob("*.safetensors"):
            weights.unlink()
    with torch.device("meta"):  # configs filled with every default; no memory
        transformer = CogVideoXTransformer3DModel(**full_size_transformer_config(family))
        vae = AutoencoderKLCogVideoX(
            **VAE_FULL_SIZE,
            scaling_factor=SCALING_FACTOR[family],
            invert_scale_latents=family == "1.5-i2v",  # as the released 1.5 VAE
        )
    transformer.save_config(partial / "transformer")
    vae.save_config(partial / "vae")
    T5Config(**T5_XXL).save_pretrained(partial / "text_encoder")
    if family.endswith("-i2v"):
        from PIL import Image

        Image.new("RGB", (720, 480), (128, 96, 64)).save(partial / VALIDATION_IMAGE)
    partial.replace(folder)
    return folder


def gpu_world(config):
    """The stand-in GPU: meta tensors, the GPU's attention kernel and its workspaces."""
    import torch
    from memory_stages import GPU_STAND_IN, World

    aten = torch.ops.aten
    kernel = GPU_ATTENTION[config.attention_backend]

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
        if kernel == "flash":
            args = (query, key, value, dropout_p, is_causal, False)
            return aten._scaled_dot_product_flash_attention(*args, scale=scale)[0]
        if kernel == "efficient":
            args = (query, key, value, attn_mask, grad, dropout_p, is_causal)
            return aten._scaled_dot_product_efficient_attention(*args, scale=scale)[0]
        if kernel == "cudnn":
            args = (query, key, value, attn_mask, grad, dropout_p, is_causal)
            return aten._scaled_dot_product_cudnn_attention(*args, scale=scale)[0]
        return aten._scaled_dot_product_attention_math(
            query, key, value, attn_mask, dropout_p, is_causal, scale=scale
        )[0]

    def flash_backward(args, kwargs) -> int:
        # FlashAttention-2's backward accumulates dq in fp32 ([B, L rounded to 128, H, D]) and
        # keeps the softmax's row sums ([B, H, L rounded], fp32) while it runs.
        batch, heads, length, dim = args[1].shape
        rounded = -(-length // 128) * 128
        return 4 * batch * heads * rounded * (dim + 1)

    def conv_workspace(args, kwargs) -> int:
        return CUDNN_CONV3D_WORKSPACE if args[0].dim() == 5 else 0

    return World(
        fake=True,
        device=GPU_STAND_IN,
        attention=attention,
        workspaces={
            aten._scaled_dot_product_flash_attention_backward.default: flash_backward,
            aten.convolution.default: conv_workspace,
        },
        persistent=CUBLAS_WORKSPACES,
    )


def optimizer_on_gpu(config) -> dict:
    """The torch AdamW implementation a GPU would run for this config (8-bit AdamW has one)."""
    if config.use_8bit_bnb:
        return {}
    return {
        "optimizer_implementation": GPU_OPTIMIZER_IMPLEMENTATION[config.optimizer_implementation]
    }


# ---- one prediction -------------------------------------------------------------------------


@dataclass
class Prediction:
    """One configuration's predicted stage table and what its memory is made of."""

    label: str
    rows: list  # memory_stages.StageFigures, one per stage
    parts: dict  # bytes of the weights, the trainable ones and the optimizer's states
    parameters: int  # the transformer's
    seconds: float

    def row(self, stage: str):
        return next(row for row in self.rows if row.stage == stage)

    @property
    def training_reserved_gb(self) -> float:
        """Max reserved through training: the trainer's figure when validation starts."""
        return self.row("before validation start").max_reserved / GB

    @property
    def validation_reserved_gb(self) -> float:
        return self.row("after validation end").max_reserved / GB

    @property
    def training_peak_gb(self) -> float:
        """The most allocated at once while training (the optimizer steps)."""
        return self.row("after epoch 1").peak_allocated / GB

    def figures(self) -> dict:
        """What assets/memory/predicted.json keeps of it (GB, 3 decimals)."""
        parts = {f"{name}_gb": round(value / GB, 3) for name, value in self.parts.items()}
        return {
            "training_reserved_gb": round(self.training_reserved_gb, 3),
            "validation_reserved_gb": round(self.validation_reserved_gb, 3),
            "training_peak_allocated_gb": round(self.training_peak_gb, 3),
            **parts,
            "parameters": self.parameters,
            "stages": {
                row.stage: {
                    "allocated": round(row.allocated / GB, 3),
                    "peak_allocated": round(row.peak_allocated / GB, 3),
                    "max_reserved": round(row.max_reserved / GB, 3),
                }
                for row in self.rows
            },
        }


def predict(label: str, model: Path, bucket: str, settings: dict, options: str = "") -> Prediction:
    """The stage table of `settings` changed by `options`, on `model`'s configs."""
    from memory_stages import run_stages

    from core.config import parse_bucket

    config = make_train_config(model, bucket, settings, options)
    started = time.perf_counter()
    recording = run_stages(config, gpu_world(config), parse_bucket(bucket))
    rows = recording.table(config.expandable_segments)
    seconds = time.perf_counter() - started
    return Prediction(label, rows, recording.parts, recording.parameters, seconds)


# ---- the report -----------------------------------------------------------------------------


def _gb(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def stage_table(predictions: list[Prediction], training: str, family: str) -> list[str]:
    """Stages as rows: the reference's two figures (the 5b), then three per prediction."""
    reference = REFERENCE_STAGES[TRAINING_TYPES[training]] if family == "5b" else {}
    header = ["stage", "reference: allocated", "reference: max reserved"]
    for prediction in predictions:
        name = prediction.label
        header += [f"{name}: allocated", f"{name}: peak in stage", f"{name}: max reserved"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in enumerate(predictions[0].rows):
        allocated, reserved = reference.get(row.stage, (None, None))
        cells = [row.stage, _gb(allocated), _gb(reserved)]
        for prediction in predictions:
            mine = prediction.rows[index]
            cells += [_gb(mine.allocated / GB), _gb(mine.peak_allocated / GB)]
            cells.append(_gb(mine.max_reserved / GB))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(predictions: list[Prediction], family: str, training: str) -> list[str]:
    lines = [
        "| configuration | training: peak allocated | training: max reserved "
        "| through validation: max reserved | a GPU needs free (+ CUDA context) "
        "| CPU memory in tensors while training | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for p in predictions:
        host = p.row("after epoch 1").host_peak / GB
        lines.append(
            f"| {p.label} | {p.training_peak_gb:.2f} | {p.training_reserved_gb:.2f} "
            f"| {p.validation_reserved_gb:.2f} | {p.validation_reserved_gb + CUDA_CONTEXT_GB:.1f} "
            f"| {host:.1f} | {p.seconds:.0f} |"
        )
    goals = [
        f"{' '.join(key[2:]) or 'the recommended options'}: {name} <= {gb:g} GB"
        for key, goal in GOALS_GB.items()
        if key[:2] == (family, training)
        for name, gb in goal.items()
    ]
    if goals:
        lines += ["", "Goals (max reserved): " + "; ".join(goals) + "."]
    return lines


# ---- the command line -----------------------------------------------------------------------


def default_workdir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache, "cogvideox-studio", "bench")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--family", choices=(*FAMILY_BUCKETS, *I2V_BUCKETS), default="5b")
    parser.add_argument("--training", choices=tuple(TRAINING_TYPES), default="lora")
    parser.add_argument(
        "--configs",
        nargs="*",
        default=["recommended"],
        choices=("reference", "recommended"),
        help="configurations to predict (the last line is always the recommended one's)",
    )
    parser.add_argument("--options", default=None, help="one more configuration: a+b options")
    parser.add_argument("--bucket", default=None, help="FxHxW (default: the family's usual)")
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="a checkpoint folder whose configs to use (default: the family's real ones)",
    )
    parser.add_argument("--workdir", type=Path, default=None, help="keeps the configs")
    parser.add_argument("--jobs", type=int, default=1, help="processes for --write-figures")
    parser.add_argument(
        "--write-figures",
        action="store_true",
        help=f"predict every preset and the Launch group's figures; write {FIGURES.name}",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.write_figures:
        from memory_figures import write_figures

        return write_figures(workdir, args.jobs)

    if args.options is not None:
        option_settings(args.options)  # an unknown option fails before anything runs
    chosen = {"reference": "", "recommended": RECOMMENDED_OPTIONS}
    configs = [(name, chosen[name]) for name in args.configs if name != "recommended"]
    if args.options is not None:
        configs.append((args.options or "reference", args.options))
    configs.append(("recommended", RECOMMENDED_OPTIONS))
    bucket = args.bucket or {**FAMILY_BUCKETS, **I2V_BUCKETS}[args.family]
    model = args.model or config_checkpoint(workdir / f"configs-{args.family}", args.family)
    report(args.family, args.training, configs, bucket, model)
    return 0


def report(
    family: str, training: str, configs: list[tuple[str, str]], bucket: str, model: Path
) -> list[Prediction]:
    """Predict each (label, options) configuration and print the tables; the last is the
    recommended one, whose peak the last line gives."""
    print(
        f"# Predicted memory stages: CogVideoX {family} {TRAINING_TYPES[training]} at {bucket}, "
        f"batch 1, on fake tensors (GB; {os.cpu_count()} CPU cores, load average "
        f"{os.getloadavg()[0]:.1f}). Not measured on a GPU."
    )
    predictions = []
    for label, options in configs:
        predictions.append(predict(label, model, bucket, reference_settings(training), options))
        shown = options.replace("+", " ") or "the reference's settings"
        print(f"  {label}: {shown}, {predictions[-1].seconds:.0f} s")
    print()
    print("\n".join(stage_table(predictions, training, family)))
    print()
    print("\n".join(summary(predictions, family, training)))
    peak = predictions[-1].training_reserved_gb
    print(f"predicted_peak_gb_{family}_{training}: {peak:.2f}")
    return predictions


if __name__ == "__main__":
    raise SystemExit(main())
