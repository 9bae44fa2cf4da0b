"""`TrainConfig`: every setting of a training run, under the reference command line's flag names.

This model is the single source of truth (DESIGN.md, "One schema"): the trainer's argparse CLI,
the job's `spec.json`, the UI form and the "show command" text are all derived from it, so a
default or a bound is written exactly once, here. It imports no torch: the web process reads it.

Each field carries `json_schema_extra` metadata that the derived views use:
- `group`: the section of the reference script it belongs to (model, dataset, training, ...);
- `advanced`: folded away in the UI unless asked for;
- `separator`: on the command line the list is one string split on this separator.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from core.config_inputs import GROUPS as GROUPS
from core.config_inputs import InputSettings, meta
from core.errors import UserError
from core.shapes import SPATIAL_MULTIPLE as SPATIAL_MULTIPLE
from core.shapes import TEMPORAL_COMPRESSION as TEMPORAL_COMPRESSION
from core.shapes import nearest_multiples as nearest_multiples
from core.shapes import nearest_valid_frames as nearest_valid_frames
from core.shapes import parse_bucket as parse_bucket

VALIDATION_SEPARATOR = ":::"


def _split_prompts(value: Any) -> Any:
    """The command line gives prompts as one string joined by ':::'; JSON gives a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(VALIDATION_SEPARATOR) if part.strip()]
    return value


Prompts = Annotated[list[str], BeforeValidator(_split_prompts)]


class TrainConfig(InputSettings):
    """One training run, named as in the reference script (`--flag` == field name).

    The model, dataset and dataloader settings come first, from `InputSettings`
    (core/config_inputs.py); the fields here say how the run trains, validates and reports.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- training ------------------------------------------------------------------------------
    training_type: Literal["lora", "full-finetune"] = Field(
        "lora",
        description="Train a LoRA adapter or every transformer weight.",
        json_schema_extra=meta("training"),
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="Random seed; a run without one picks one and records it.",
        json_schema_extra=meta("training"),
    )
    batch_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="Clips per batch on each GPU.",
        json_schema_extra=meta("training"),
    )
    train_steps: int = Field(
        1000,
        ge=1,
        description="Optimizer steps to train for.",
        json_schema_extra=meta("training"),
    )
    precompute_conditions: bool = Field(
        False,
        description="Encode every caption and clip once before training, then free the text "
        "encoder and VAE.",
        json_schema_extra=meta("training"),
    )
    rank: int = Field(
        64, ge=1, le=1024, description="LoRA rank.", json_schema_extra=meta("training")
    )
    lora_alpha: float = Field(
        64.0,
        gt=0,
        description="LoRA alpha; the update is scaled by alpha / rank.",
        json_schema_extra=meta("training"),
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        description="Transformer layers that get LoRA adapters (name suffixes).",
        json_schema_extra=meta("training"),
    )
    noised_image_dropout: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Image-to-video: probability of training a sample without its image (the "
        "image latents zeroed), as the reference trainers do.",
        json_schema_extra=meta("training", image_to_video=True),
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="Batches whose gradients add up to one optimizer step.",
        json_schema_extra=meta("training"),
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass to save memory.",
        json_schema_extra=meta("training"),
    )
    gradient_checkpointing_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="With --gradient_checkpointing, the fraction of transformer blocks that "
        "recompute their activations; lower is faster and holds more memory.",
        json_schema_extra=meta("training", advanced=True),
    )
    offload_activations: bool = Field(
        False,
        description="With --gradient_checkpointing, keep the checkpointed blocks' inputs in CPU "
        "memory until the backward pass (less GPU memory, more copying).",
        json_schema_extra=meta("training", advanced=True),
    )
    attention_backend: Literal["auto", "fastest", "flash", "cudnn", "efficient", "math"] = Field(
        "auto",
        description="Attention kernel (torch SDPA backend): auto lets torch choose; fastest "
        "times flash, cudnn and efficient on this GPU at start and keeps the winner.",
        json_schema_extra=meta("training", advanced=True),
    )
    compile_transformer_blocks: bool = Field(
        False,
        description="Compile each transformer block with torch.compile (regional: one block's "
        "compile time); the first steps are slower while it compiles.",
        json_schema_extra=meta("training", advanced=True),
    )
    logging_steps: int = Field(
        1,
        ge=1,
        le=10000,
        description="Read the loss back from the GPU every this many steps (each read waits for "
        "the GPU); every step is still reported.",
        json_schema_extra=meta("training", advanced=True),
    )
    expandable_segments: bool = Field(
        False,
        description="Let the CUDA allocator grow memory segments in place, which lowers "
        "reserved memory when shapes vary.",
        json_schema_extra=meta("training", advanced=True),
    )
    checkpointing_steps: int = Field(
        500,
        ge=1,
        description="Write a resumable checkpoint every this many steps.",
        json_schema_extra=meta("training"),
    )
    checkpointing_limit: int | None = Field(
        None,
        ge=1,
        description="Keep only this many newest checkpoints.",
        json_schema_extra=meta("training"),
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="'latest', a step number, or a checkpoint folder to continue from; 'latest' "
        "with no checkpoint yet starts fresh.",
        json_schema_extra=meta("training"),
    )
    enable_slicing: bool = Field(
        False,
        description="Encode and decode with the VAE one clip at a time.",
        json_schema_extra=meta("training"),
    )
    enable_tiling: bool = Field(
        False,
        description="Encode and decode with the VAE in spatial tiles.",
        json_schema_extra=meta("training"),
    )
    allow_tf32: bool = Field(
        False,
        description="Allow TF32 matrix maths on Ampere and newer GPUs.",
        json_schema_extra=meta("training", advanced=True),
    )

    # -- optimizer -----------------------------------------------------------------------------
    optimizer: Literal["adam", "adamw"] = Field(
        "adam", description="Optimizer.", json_schema_extra=meta("optimizer")
    )
    use_8bit_bnb: bool = Field(
        False,
        description="Keep optimizer states in 8 bits (bitsandbytes).",
        json_schema_extra=meta("optimizer"),
    )
    optimizer_implementation: Literal["auto", "for-loop", "foreach", "fused"] = Field(
        "auto",
        description="Kernel of torch's Adam/AdamW: auto (torch's default), a Python loop, "
        "foreach (batched) or fused (one kernel).",
        json_schema_extra=meta("optimizer", advanced=True),
    )
    lr: float = Field(
        1e-4, gt=0, le=1.0, description="Learning rate.", json_schema_extra=meta("optimizer")
    )
    scale_lr: bool = Field(
        False,
        description="Multiply --lr by batch size, accumulation steps and number of processes.",
        json_schema_extra=meta("optimizer", advanced=True),
    )
    lr_scheduler: Literal[
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
    ] = Field(
        "constant", description="Learning rate schedule.", json_schema_extra=meta("optimizer")
    )
    lr_warmup_steps: int = Field(
        0, ge=0, description="Steps of linear warmup.", json_schema_extra=meta("optimizer")
    )
    lr_num_cycles: int = Field(
        1,
        ge=1,
        description="Restarts of cosine_with_restarts.",
        json_schema_extra=meta("optimizer"),
    )
    lr_power: float = Field(
        1.0,
        gt=0,
        description="Power of the polynomial schedule.",
        json_schema_extra=meta("optimizer", advanced=True),
    )
    beta1: float = Field(
        0.9, ge=0.0, lt=1.0, description="Adam beta1.", json_schema_extra=meta("optimizer")
    )
    beta2: float = Field(
        0.95, ge=0.0, lt=1.0, description="Adam beta2.", json_schema_extra=meta("optimizer")
    )
    weight_decay: float = Field(
        1e-4, ge=0.0, description="Weight decay.", json_schema_extra=meta("optimizer")
    )
    epsilon: float = Field(
        1e-8, gt=0.0, description="Adam epsilon.", json_schema_extra=meta("optimizer")
    )
    max_grad_norm: float = Field(
        1.0,
        ge=0.0,
        description="Clip the gradient norm to this (0 turns clipping off).",
        json_schema_extra=meta("optimizer"),
    )

    # -- validation ----------------------------------------------------------------------------
    validation_prompts: Prompts = Field(
        default_factory=list,
        description="Prompts to render during training, separated by ':::'.",
        json_schema_extra=meta("validation", separator=VALIDATION_SEPARATOR),
    )
    validation_images: Prompts = Field(
        default_factory=list,
        description="Image-to-video: one image file per validation prompt, separated by ':::' "
        "(default: the first training sample's image).",
        json_schema_extra=meta("validation", separator=VALIDATION_SEPARATOR, image_to_video=True),
    )
    validation_steps: int | None = Field(
        None,
        ge=1,
        description="Render the validation prompts every this many steps (and at the end).",
        json_schema_extra=meta("validation"),
    )
    num_validation_videos: int = Field(
        1,
        ge=1,
        le=16,
        description="Videos rendered per validation prompt.",
        json_schema_extra=meta("validation"),
    )
    validation_frames: int | None = Field(
        None,
        ge=1,
        description="Frames of validation videos (default: the first bucket's).",
        json_schema_extra=meta("validation"),
    )
    validation_height: int | None = Field(
        None,
        ge=SPATIAL_MULTIPLE,
        multiple_of=SPATIAL_MULTIPLE,
        description="Height of validation videos (default: the first bucket's).",
        json_schema_extra=meta("validation"),
    )
    validation_width: int | None = Field(
        None,
        ge=SPATIAL_MULTIPLE,
        multiple_of=SPATIAL_MULTIPLE,
        description="Width of validation videos (default: the first bucket's).",
        json_schema_extra=meta("validation"),
    )
    validation_inference_steps: int = Field(
        50,
        ge=1,
        le=1000,
        description="Denoising steps of validation videos.",
        json_schema_extra=meta("validation"),
    )
    validation_guidance_scale: float = Field(
        6.0,
        ge=0.0,
        le=50.0,
        description="Classifier-free guidance of validation videos.",
        json_schema_extra=meta("validation"),
    )
    validation_negative_prompt: str = Field(
        "",
        description="Negative prompt of validation videos.",
        json_schema_extra=meta("validation", advanced=True),
    )
    validation_fps: int = Field(
        8,
        ge=1,
        le=120,
        description="Frame rate of the written validation mp4s.",
        json_schema_extra=meta("validation", advanced=True),
    )

    # -- misc ----------------------------------------------------------------------------------
    tracker_name: str = Field(
        "cogvideox-studio",
        min_length=1,
        description="Project name for the experiment tracker.",
        json_schema_extra=meta("misc"),
    )
    output_dir: str = Field(
        "cogvideox-lora",
        min_length=1,
        description="Folder for checkpoints, validation videos, events and the final weights.",
        json_schema_extra=meta("misc"),
    )
    logging_dir: str = Field(
        "logs",
        description="Tracker logs, under --output_dir.",
        json_schema_extra=meta("misc", advanced=True),
    )
    nccl_timeout: int = Field(
        600,
        ge=1,
        description="Seconds before a stuck collective between GPUs fails the run.",
        json_schema_extra=meta("misc"),
    )
    report_to: Literal["none", "wandb", "tensorboard"] = Field(
        "none", description="Experiment tracker.", json_schema_extra=meta("misc")
    )

    # -- rules between settings ----------------------------------------------------------------
    @model_validator(mode="after")
    def _settings_agree(self) -> TrainConfig:
        """Refuse settings that can't work together, naming the flag to change."""
        problem = settings_conflict(self)
        if problem:
            raise ValueError(problem)
        return self

    # -- derived views -------------------------------------------------------------------------
    @property
    def buckets(self) -> list[tuple[int, int, int]]:
        """`video_resolution_buckets` as (frames, height, width) tuples."""
        return [parse_bucket(text) for text in self.video_resolution_buckets]

    @property
    def cache_path(self) -> Path:
        """The precompute cache folder this run uses."""
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "cogvideox-studio"

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir).expanduser()


def settings_conflict(config: TrainConfig) -> str | None:
    """The first pair of settings that can't work together, as one sentence, or None."""
    if config.training_type == "full-finetune" and config.layerwise_upcasting_modules:
        return (
            "--layerwise_upcasting_modules: fp8 storage works with --training_type lora only "
            "(full finetuning updates those weights)"
        )
    if config.offload_activations and not config.gradient_checkpointing:
        return (
            "--offload_activations moves the inputs of checkpointed blocks to the CPU: "
            "add --gradient_checkpointing"
        )
    images, prompts = len(config.validation_images), len(config.validation_prompts)
    if images and images != prompts:
        return (
            f"--validation_images: {images} image{'s' if images != 1 else ''} for {prompts} "
            f"validation prompt{'s' if prompts != 1 else ''}; give one image per prompt, or none "
            "to start every validation video from the first training sample's image"
        )
    if config.use_8bit_bnb and config.optimizer_implementation != "auto":
        return (
            "--optimizer_implementation applies to torch's Adam/AdamW; the 8-bit optimizers "
            "of --use_8bit_bnb have their own kernels, so leave it at auto"
        )
    return None


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as one sentence naming the flag."""
    first = error.errors()[0]
    parts = [str(part) for part in first.get("loc", ()) if not isinstance(part, int)]
    rule = first.get("type") == "value_error"
    if parts[:1] == ["train"] and (len(parts) > 1 or rule):  # a job spec's trainer settings
        parts = parts[1:]
    location = ".".join(parts)
    message = first.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    if not location and rule:
        return message  # a rule between settings: its sentence names the flags
    if first.get("type") == "extra_forbidden":
        return f"--{location} is not a setting of the trainer"
    value = first.get("input")
    if value is not None and not isinstance(value, (dict, list)) and str(value) not in message:
        return f"--{location}: {message} (got {value!r})"
    return f"--{location}: {message}"


def make_config(settings: dict[str, Any]) -> TrainConfig:
    """Validate settings into a `TrainConfig`, or raise UserError naming the flag."""
    try:
        return TrainConfig.model_validate(settings)
    except ValidationError as error:
        raise UserError(describe_validation_error(error)) from None


# The command line (`build_parser`, `parse_args`, `to_argv`) is derived from this model in
# core/config_cli.py; these names stay importable from here.


def build_parser(prog: str = "python -m core.train"):
    """The trainer's CLI: one flag per `TrainConfig` field, plus `--config FILE`."""
    from core.config_cli import build_parser as build

    return build(prog)


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line (and optional --config JSON) to a validated `TrainConfig`; raises UserError."""
    from core.config_cli import parse_args as parse

    return parse(argv)


def to_argv(config: TrainConfig, only_changed: bool = True) -> list[str]:
    """The flags that reproduce `config` on the command line (the "show command" text)."""
    from core.config_cli import to_argv as flags

    return flags(config, only_changed)
