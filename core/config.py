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

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from core.errors import UserError

GROUPS = ("model", "dataset", "dataloader", "training", "optimizer", "validation", "misc")
VALIDATION_SEPARATOR = ":::"
# CogVideoX's VAE compresses space 8x and the transformer patches 2x2, so sides are multiples of 16.
SPATIAL_MULTIPLE = 16
# The VAE compresses time 4x and keeps the first frame: clips have 4k+1 frames.
TEMPORAL_COMPRESSION = 4

_BUCKET = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def nearest_valid_frames(frames: int, step: int = TEMPORAL_COMPRESSION) -> list[int]:
    """The frame counts of the form step*k+1 that lie nearest to `frames` (one or two values)."""
    below = ((frames - 1) // step) * step + 1
    above = below + step
    candidates = [value for value in (below, above) if value >= 1]
    best = min(abs(value - frames) for value in candidates)
    return [value for value in candidates if abs(value - frames) == best]


def nearest_multiples(value: int, multiple: int = SPATIAL_MULTIPLE) -> list[int]:
    """The multiples of `multiple` nearest to `value` (one or two values)."""
    below = max(multiple, (value // multiple) * multiple)
    above = below + multiple
    best = min(abs(below - value), abs(above - value))
    return [m for m in (below, above) if abs(m - value) == best]


def parse_bucket(text: str) -> tuple[int, int, int]:
    """`"49x480x720"` -> `(49, 480, 720)`, or ValueError with a sentence saying what is wrong."""
    match = _BUCKET.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not FxHxW (frames x height x width), for example 49x480x720")
    frames, height, width = (int(group) for group in match.groups())
    if frames < 1 or (frames - 1) % TEMPORAL_COMPRESSION:
        nearest = " or ".join(str(v) for v in nearest_valid_frames(max(frames, 1)))
        raise ValueError(
            f"'{text}' has {frames} frames, but CogVideoX needs 4k+1 frames; "
            f"the nearest are {nearest}"
        )
    for side, name in ((height, "height"), (width, "width")):
        if side < SPATIAL_MULTIPLE or side % SPATIAL_MULTIPLE:
            nearest = " or ".join(str(v) for v in nearest_multiples(side))
            raise ValueError(
                f"'{text}' has {name} {side}, which must be a multiple of {SPATIAL_MULTIPLE}; "
                f"the nearest are {nearest}"
            )
    return frames, height, width


def _normalize_bucket(text: str) -> str:
    frames, height, width = parse_bucket(text)
    return f"{frames}x{height}x{width}"


def _split_prompts(value: Any) -> Any:
    """The command line gives prompts as one string joined by ':::'; JSON gives a list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(VALIDATION_SEPARATOR) if part.strip()]
    return value


VideoBucket = Annotated[str, AfterValidator(_normalize_bucket)]
Prompts = Annotated[list[str], BeforeValidator(_split_prompts)]


def _meta(group: str, advanced: bool = False, **extra: Any) -> dict[str, Any]:
    return {"group": group, "advanced": advanced, **extra}


class TrainConfig(BaseModel):
    """One training run, named as in the reference script (`--flag` == field name)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- model ---------------------------------------------------------------------------------
    model_name: Literal["cogvideox"] = Field(
        "cogvideox", description="Model family to train.", json_schema_extra=_meta("model")
    )
    pretrained_model_name_or_path: str = Field(
        "THUDM/CogVideoX-5b",
        min_length=1,
        description="Base model: a Hub id such as THUDM/CogVideoX-5b, or a local folder in the "
        "diffusers layout.",
        json_schema_extra=_meta("model"),
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) of the base model.",
        json_schema_extra=_meta("model", advanced=True),
    )
    variant: str | None = Field(
        None,
        description="Weight variant of the base model files (for example fp16).",
        json_schema_extra=_meta("model", advanced=True),
    )
    transformer_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Dtype the transformer computes in.", json_schema_extra=_meta("model")
    )
    text_encoder_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16",
        description="Dtype of the T5 text encoder.",
        json_schema_extra=_meta("model", advanced=True),
    )
    vae_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Dtype of the VAE.", json_schema_extra=_meta("model", advanced=True)
    )
    layerwise_upcasting_modules: list[Literal["transformer"]] = Field(
        default_factory=list,
        description="Store these modules' frozen weights in fp8 and upcast each layer to "
        "--transformer_dtype only while it computes (halves weight memory).",
        json_schema_extra=_meta("model"),
    )
    layerwise_upcasting_storage_dtype: Literal["float8_e4m3fn", "float8_e5m2"] = Field(
        "float8_e4m3fn",
        description="fp8 format for layerwise upcasting storage.",
        json_schema_extra=_meta("model", advanced=True),
    )
    layerwise_upcasting_skip_modules_pattern: list[str] = Field(
        default_factory=lambda: [
            "patch_embed",
            "pos_embed",
            "x_embedder",
            "context_embedder",
            "^proj_in$",
            "^proj_out$",
            "norm",
        ],
        description="Layers whose names match these patterns keep their full precision.",
        json_schema_extra=_meta("model", advanced=True),
    )

    # -- dataset -------------------------------------------------------------------------------
    data_root: str = Field(
        "",
        description="Folder (or .zip) holding the clips and captions.",
        json_schema_extra=_meta("dataset"),
    )
    dataset_layout: Literal["auto", "reference", "metadata", "pairs"] = Field(
        "auto",
        description="How captions are paired with clips: the reference's two files, a "
        "metadata.csv/jsonl, or name.mp4 beside name.txt; auto tries them in that order.",
        json_schema_extra=_meta("dataset", advanced=True),
    )
    video_column: str = Field(
        "videos.txt",
        min_length=1,
        description="File under --data_root listing one clip path per line, relative to it "
        "(or the file column of a metadata.csv).",
        json_schema_extra=_meta("dataset"),
    )
    caption_column: str = Field(
        "prompt.txt",
        min_length=1,
        description="File under --data_root holding one caption per line, in the order of "
        "--video_column (or the caption column of a metadata.csv).",
        json_schema_extra=_meta("dataset"),
    )
    id_token: str | None = Field(
        None,
        description="Trigger word put in front of every caption (for example BW_STYLE).",
        json_schema_extra=_meta("dataset"),
    )
    video_resolution_buckets: list[VideoBucket] = Field(
        default_factory=lambda: ["49x480x720"],
        min_length=1,
        description="Training shapes as FxHxW (frames x height x width); each clip goes to the "
        "largest frame count it fills, then the nearest aspect ratio.",
        json_schema_extra=_meta("dataset"),
    )
    caption_dropout_p: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Probability of training a step on an empty caption (helps guidance).",
        json_schema_extra=_meta("dataset"),
    )
    caption_dropout_technique: Literal["empty", "zero"] = Field(
        "empty",
        description="A dropped caption becomes the empty prompt's embedding or zeros.",
        json_schema_extra=_meta("dataset", advanced=True),
    )

    cache_dir: str | None = Field(
        None,
        description="Where encoded clips and captions are kept between runs (default: the "
        "workspace's cache when the app runs the job, else ~/.cache/cogvideox-studio).",
        json_schema_extra=_meta("dataset", advanced=True),
    )

    # -- dataloader ----------------------------------------------------------------------------
    dataloader_num_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes that decode clips in the background.",
        json_schema_extra=_meta("dataloader"),
    )
    pin_memory: bool = Field(
        False,
        description="Pin host memory of batches for faster copies to the GPU.",
        json_schema_extra=_meta("dataloader", advanced=True),
    )

    # -- training ------------------------------------------------------------------------------
    training_type: Literal["lora", "full-finetune"] = Field(
        "lora",
        description="Train a LoRA adapter or every transformer weight.",
        json_schema_extra=_meta("training"),
    )
    seed: int | None = Field(
        None,
        ge=0,
        description="Random seed; a run without one picks one and records it.",
        json_schema_extra=_meta("training"),
    )
    batch_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="Clips per batch on each GPU.",
        json_schema_extra=_meta("training"),
    )
    train_steps: int = Field(
        1000,
        ge=1,
        description="Optimizer steps to train for.",
        json_schema_extra=_meta("training"),
    )
    precompute_conditions: bool = Field(
        False,
        description="Encode every caption and clip once before training, then free the text "
        "encoder and VAE.",
        json_schema_extra=_meta("training"),
    )
    rank: int = Field(
        64, ge=1, le=1024, description="LoRA rank.", json_schema_extra=_meta("training")
    )
    lora_alpha: float = Field(
        64.0,
        gt=0,
        description="LoRA alpha; the update is scaled by alpha / rank.",
        json_schema_extra=_meta("training"),
    )
    target_modules: list[str] = Field(
        default_factory=lambda: ["to_q", "to_k", "to_v", "to_out.0"],
        min_length=1,
        description="Transformer layers that get LoRA adapters (name suffixes).",
        json_schema_extra=_meta("training"),
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=1024,
        description="Batches whose gradients add up to one optimizer step.",
        json_schema_extra=_meta("training"),
    )
    gradient_checkpointing: bool = Field(
        False,
        description="Recompute activations in the backward pass to save memory.",
        json_schema_extra=_meta("training"),
    )
    gradient_checkpointing_ratio: float = Field(
        1.0,
        gt=0,
        le=1,
        description="With --gradient_checkpointing, the fraction of transformer blocks that "
        "recompute their activations; lower is faster and holds more memory.",
        json_schema_extra=_meta("training", advanced=True),
    )
    offload_activations: bool = Field(
        False,
        description="With --gradient_checkpointing, keep the checkpointed blocks' inputs in CPU "
        "memory until the backward pass (less GPU memory, more copying).",
        json_schema_extra=_meta("training", advanced=True),
    )
    attention_backend: Literal["auto", "fastest", "flash", "cudnn", "efficient", "math"] = Field(
        "auto",
        description="Attention kernel (torch SDPA backend): auto lets torch choose; fastest "
        "times flash, cudnn and efficient on this GPU at start and keeps the winner.",
        json_schema_extra=_meta("training", advanced=True),
    )
    compile_transformer_blocks: bool = Field(
        False,
        description="Compile each transformer block with torch.compile (regional: one block's "
        "compile time); the first steps are slower while it compiles.",
        json_schema_extra=_meta("training", advanced=True),
    )
    logging_steps: int = Field(
        1,
        ge=1,
        le=10000,
        description="Read the loss back from the GPU every this many steps (each read waits for "
        "the GPU); every step is still reported.",
        json_schema_extra=_meta("training", advanced=True),
    )
    expandable_segments: bool = Field(
        False,
        description="Let the CUDA allocator grow memory segments in place, which lowers "
        "reserved memory when shapes vary.",
        json_schema_extra=_meta("training", advanced=True),
    )
    checkpointing_steps: int = Field(
        500,
        ge=1,
        description="Write a resumable checkpoint every this many steps.",
        json_schema_extra=_meta("training"),
    )
    checkpointing_limit: int | None = Field(
        None,
        ge=1,
        description="Keep only this many newest checkpoints.",
        json_schema_extra=_meta("training"),
    )
    resume_from_checkpoint: str | None = Field(
        None,
        description="'latest', a step number, or a checkpoint folder to continue from; 'latest' "
        "with no checkpoint yet starts fresh.",
        json_schema_extra=_meta("training"),
    )
    enable_slicing: bool = Field(
        False,
        description="Encode and decode with the VAE one clip at a time.",
        json_schema_extra=_meta("training"),
    )
    enable_tiling: bool = Field(
        False,
        description="Encode and decode with the VAE in spatial tiles.",
        json_schema_extra=_meta("training"),
    )
    allow_tf32: bool = Field(
        False,
        description="Allow TF32 matrix maths on Ampere and newer GPUs.",
        json_schema_extra=_meta("training", advanced=True),
    )

    # -- optimizer -----------------------------------------------------------------------------
    optimizer: Literal["adam", "adamw"] = Field(
        "adam", description="Optimizer.", json_schema_extra=_meta("optimizer")
    )
    use_8bit_bnb: bool = Field(
        False,
        description="Keep optimizer states in 8 bits (bitsandbytes).",
        json_schema_extra=_meta("optimizer"),
    )
    optimizer_implementation: Literal["auto", "for-loop", "foreach", "fused"] = Field(
        "auto",
        description="Kernel of torch's Adam/AdamW: auto (torch's default), a Python loop, "
        "foreach (batched) or fused (one kernel).",
        json_schema_extra=_meta("optimizer", advanced=True),
    )
    lr: float = Field(
        1e-4, gt=0, le=1.0, description="Learning rate.", json_schema_extra=_meta("optimizer")
    )
    scale_lr: bool = Field(
        False,
        description="Multiply --lr by batch size, accumulation steps and number of processes.",
        json_schema_extra=_meta("optimizer", advanced=True),
    )
    lr_scheduler: Literal[
        "constant",
        "constant_with_warmup",
        "linear",
        "cosine",
        "cosine_with_restarts",
        "polynomial",
    ] = Field(
        "constant", description="Learning rate schedule.", json_schema_extra=_meta("optimizer")
    )
    lr_warmup_steps: int = Field(
        0, ge=0, description="Steps of linear warmup.", json_schema_extra=_meta("optimizer")
    )
    lr_num_cycles: int = Field(
        1,
        ge=1,
        description="Restarts of cosine_with_restarts.",
        json_schema_extra=_meta("optimizer"),
    )
    lr_power: float = Field(
        1.0,
        gt=0,
        description="Power of the polynomial schedule.",
        json_schema_extra=_meta("optimizer", advanced=True),
    )
    beta1: float = Field(
        0.9, ge=0.0, lt=1.0, description="Adam beta1.", json_schema_extra=_meta("optimizer")
    )
    beta2: float = Field(
        0.95, ge=0.0, lt=1.0, description="Adam beta2.", json_schema_extra=_meta("optimizer")
    )
    weight_decay: float = Field(
        1e-4, ge=0.0, description="Weight decay.", json_schema_extra=_meta("optimizer")
    )
    epsilon: float = Field(
        1e-8, gt=0.0, description="Adam epsilon.", json_schema_extra=_meta("optimizer")
    )
    max_grad_norm: float = Field(
        1.0,
        ge=0.0,
        description="Clip the gradient norm to this (0 turns clipping off).",
        json_schema_extra=_meta("optimizer"),
    )

    # -- validation ----------------------------------------------------------------------------
    validation_prompts: Prompts = Field(
        default_factory=list,
        description="Prompts to render during training, separated by ':::'.",
        json_schema_extra=_meta("validation", separator=VALIDATION_SEPARATOR),
    )
    validation_steps: int | None = Field(
        None,
        ge=1,
        description="Render the validation prompts every this many steps (and at the end).",
        json_schema_extra=_meta("validation"),
    )
    num_validation_videos: int = Field(
        1,
        ge=1,
        le=16,
        description="Videos rendered per validation prompt.",
        json_schema_extra=_meta("validation"),
    )
    validation_frames: int | None = Field(
        None,
        ge=1,
        description="Frames of validation videos (default: the first bucket's).",
        json_schema_extra=_meta("validation"),
    )
    validation_height: int | None = Field(
        None,
        ge=SPATIAL_MULTIPLE,
        multiple_of=SPATIAL_MULTIPLE,
        description="Height of validation videos (default: the first bucket's).",
        json_schema_extra=_meta("validation"),
    )
    validation_width: int | None = Field(
        None,
        ge=SPATIAL_MULTIPLE,
        multiple_of=SPATIAL_MULTIPLE,
        description="Width of validation videos (default: the first bucket's).",
        json_schema_extra=_meta("validation"),
    )
    validation_inference_steps: int = Field(
        50,
        ge=1,
        le=1000,
        description="Denoising steps of validation videos.",
        json_schema_extra=_meta("validation"),
    )
    validation_guidance_scale: float = Field(
        6.0,
        ge=0.0,
        le=50.0,
        description="Classifier-free guidance of validation videos.",
        json_schema_extra=_meta("validation"),
    )
    validation_negative_prompt: str = Field(
        "",
        description="Negative prompt of validation videos.",
        json_schema_extra=_meta("validation", advanced=True),
    )
    validation_fps: int = Field(
        8,
        ge=1,
        le=120,
        description="Frame rate of the written validation mp4s.",
        json_schema_extra=_meta("validation", advanced=True),
    )

    # -- misc ----------------------------------------------------------------------------------
    tracker_name: str = Field(
        "cogvideox-studio",
        min_length=1,
        description="Project name for the experiment tracker.",
        json_schema_extra=_meta("misc"),
    )
    output_dir: str = Field(
        "cogvideox-lora",
        min_length=1,
        description="Folder for checkpoints, validation videos, events and the final weights.",
        json_schema_extra=_meta("misc"),
    )
    logging_dir: str = Field(
        "logs",
        description="Tracker logs, under --output_dir.",
        json_schema_extra=_meta("misc", advanced=True),
    )
    nccl_timeout: int = Field(
        600,
        ge=1,
        description="Seconds before a stuck collective between GPUs fails the run.",
        json_schema_extra=_meta("misc"),
    )
    report_to: Literal["none", "wandb", "tensorboard"] = Field(
        "none", description="Experiment tracker.", json_schema_extra=_meta("misc")
    )

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


# ---------------------------------------------------------------------------------------------
# The command line, derived from the model.


def field_group(name: str) -> str:
    extra = TrainConfig.model_fields[name].json_schema_extra or {}
    return extra.get("group", "misc")


def _field_extra(name: str) -> dict[str, Any]:
    return dict(TrainConfig.model_fields[name].json_schema_extra or {})


def _unwrap_optional(annotation: Any) -> Any:
    args = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) in (None,) or not args:
        return annotation
    if type(None) in get_args(annotation) and len(args) == 1:
        return args[0]
    return annotation


def _is_list(annotation: Any) -> bool:
    annotation = _unwrap_optional(annotation)
    if get_origin(annotation) is Annotated:
        return _is_list(get_args(annotation)[0])
    return get_origin(annotation) is list


def _choices(annotation: Any) -> list[str] | None:
    annotation = _unwrap_optional(annotation)
    if get_origin(annotation) is list:
        annotation = get_args(annotation)[0]
    if get_origin(annotation) is Literal:
        return [str(choice) for choice in get_args(annotation)]
    return None


class _OneSentenceParser(argparse.ArgumentParser):
    """argparse that answers a bad command line with one sentence and exit status 2."""

    def error(self, message: str) -> None:
        raise UserError(f"{message} (see --help)")


def build_parser(prog: str = "python -m core.train") -> argparse.ArgumentParser:
    """The trainer's CLI: one flag per `TrainConfig` field, plus `--config FILE`."""
    parser = _OneSentenceParser(
        prog=prog,
        description="Train a CogVideoX LoRA or full finetune. Flags follow the reference guide; "
        "--config reads the same settings from JSON (a job's spec.json or a plain config), and "
        "flags given beside it win.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--config", help="JSON file with the settings (spec.json or a config).")
    groups = {name: parser.add_argument_group(name) for name in GROUPS}
    for name, info in TrainConfig.model_fields.items():
        extra = _field_extra(name)
        group = groups[extra.get("group", "misc")]
        help_text = info.description or ""
        default = info.get_default(call_default_factory=True)
        if default not in (None, [], ""):
            shown = " ".join(default) if isinstance(default, list) else default
            help_text += f" (default: {shown})"
        kwargs: dict[str, Any] = {"help": help_text.replace("%", "%%"), "dest": name}
        if info.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _is_list(info.annotation) and not extra.get("separator"):
            kwargs["nargs"] = "*"
            kwargs["metavar"] = name.upper()
        choices = _choices(info.annotation)
        if choices and info.annotation is not bool:
            kwargs["choices"] = choices
        group.add_argument(f"--{name}", **kwargs)
    return parser


def describe_validation_error(error: ValidationError) -> str:
    """The first problem of a pydantic error as one sentence naming the flag."""
    first = error.errors()[0]
    parts = [str(part) for part in first.get("loc", ()) if not isinstance(part, int)]
    if len(parts) > 1 and parts[0] == "train":  # a job spec's trainer settings: name the flag
        parts = parts[1:]
    location = ".".join(parts)
    message = first.get("msg", "invalid value")
    message = message.removeprefix("Value error, ")
    if first.get("type") == "extra_forbidden":
        return f"--{location} is not a setting of the trainer"
    value = first.get("input")
    if value is not None and not isinstance(value, (dict, list)) and str(value) not in message:
        return f"--{location}: {message} (got {value!r})"
    return f"--{location}: {message}"


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a JSON file: a job's spec.json (its "train" part) or a plain config."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"--config: {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"--config: {path} is not readable JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"--config: {path} must hold a JSON object")
    if isinstance(data.get("train"), dict):
        return dict(data["train"])
    return data


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    """Command line (and optional --config JSON) to a validated `TrainConfig`; raises UserError."""
    namespace = vars(build_parser().parse_args(sys.argv[1:] if argv is None else argv))
    settings: dict[str, Any] = {}
    config_path = namespace.pop("config", None)
    if config_path:
        settings.update(load_config_file(config_path))
    settings.update(namespace)
    return make_config(settings)


def make_config(settings: dict[str, Any]) -> TrainConfig:
    """Validate settings into a `TrainConfig`, or raise UserError naming the flag."""
    try:
        return TrainConfig.model_validate(settings)
    except ValidationError as error:
        raise UserError(describe_validation_error(error)) from None


def to_argv(config: TrainConfig, only_changed: bool = True) -> list[str]:
    """The flags that reproduce `config` on the command line (the "show command" text)."""
    argv: list[str] = []
    defaults = TrainConfig()
    for name, info in TrainConfig.model_fields.items():
        value = getattr(config, name)
        if only_changed and value == getattr(defaults, name):
            continue
        extra = _field_extra(name)
        flag = f"--{name}"
        if info.annotation is bool:
            argv.append(flag if value else f"--no-{name}")
        elif value is None:
            continue
        elif isinstance(value, list):
            if extra.get("separator"):
                argv += [flag, extra["separator"].join(value)]
            else:
                argv += [flag, *[str(item) for item in value]]
        else:
            argv += [flag, str(value)]
    return argv
