"""The settings of what a run trains on: the model, the dataset and the dataloader.

The first groups of `TrainConfig` (core/config.py), kept in their own model so each file stays
readable; `TrainConfig` inherits them in this order, so the CLI, the form and `to_argv` list them
first, as the reference guide does. Torch-free.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from core.shapes import normalize_bucket

GROUPS = ("model", "dataset", "dataloader", "training", "optimizer", "validation", "misc")

VideoBucket = Annotated[str, AfterValidator(normalize_bucket)]


def meta(group: str, advanced: bool = False, **extra: Any) -> dict[str, Any]:
    """A field's metadata for the derived views: its group, and whether it is folded away."""
    return {"group": group, "advanced": advanced, **extra}


class InputSettings(BaseModel):
    """The model, dataset and dataloader settings of a training run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # -- model ---------------------------------------------------------------------------------
    model_name: Literal["cogvideox"] = Field(
        "cogvideox", description="Model family to train.", json_schema_extra=meta("model")
    )
    pretrained_model_name_or_path: str = Field(
        "THUDM/CogVideoX-5b",
        min_length=1,
        description="Base model: a Hub id such as THUDM/CogVideoX-5b, or a local folder in the "
        "diffusers layout.",
        json_schema_extra=meta("model"),
    )
    revision: str | None = Field(
        None,
        description="Hub revision (branch, tag or commit) of the base model.",
        json_schema_extra=meta("model", advanced=True),
    )
    variant: str | None = Field(
        None,
        description="Weight variant of the base model files (for example fp16).",
        json_schema_extra=meta("model", advanced=True),
    )
    transformer_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Dtype the transformer computes in.", json_schema_extra=meta("model")
    )
    text_encoder_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16",
        description="Dtype of the T5 text encoder.",
        json_schema_extra=meta("model", advanced=True),
    )
    vae_dtype: Literal["bf16", "fp16", "fp32"] = Field(
        "bf16", description="Dtype of the VAE.", json_schema_extra=meta("model", advanced=True)
    )
    layerwise_upcasting_modules: list[Literal["transformer"]] = Field(
        default_factory=list,
        description="Store these modules' frozen weights in fp8 and upcast each layer to "
        "--transformer_dtype only while it computes (halves weight memory).",
        json_schema_extra=meta("model"),
    )
    layerwise_upcasting_storage_dtype: Literal["float8_e4m3fn", "float8_e5m2"] = Field(
        "float8_e4m3fn",
        description="fp8 format for layerwise upcasting storage.",
        json_schema_extra=meta("model", advanced=True),
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
        json_schema_extra=meta("model", advanced=True),
    )
    ignore_learned_positional_embeddings: bool = Field(
        False,
        description="Image-to-video: drop CogVideoX-5b-I2V's learned positional embeddings, "
        "which fit 49x480x720 only, to train at other shapes (the model card and previews then "
        "drop them too).",
        json_schema_extra=meta("model", advanced=True, image_to_video=True),
    )

    # -- dataset -------------------------------------------------------------------------------
    data_root: str = Field(
        "",
        description="Folder (or .zip) holding the clips and captions.",
        json_schema_extra=meta("dataset"),
    )
    dataset_layout: Literal["auto", "reference", "metadata", "pairs"] = Field(
        "auto",
        description="How captions are paired with clips: the reference's two files, a "
        "metadata.csv/jsonl, or name.mp4 beside name.txt; auto tries them in that order.",
        json_schema_extra=meta("dataset", advanced=True),
    )
    video_column: str = Field(
        "videos.txt",
        min_length=1,
        description="File under --data_root listing one clip path per line, relative to it "
        "(or the file column of a metadata.csv).",
        json_schema_extra=meta("dataset"),
    )
    caption_column: str = Field(
        "prompt.txt",
        min_length=1,
        description="File under --data_root holding one caption per line, in the order of "
        "--video_column (or the caption column of a metadata.csv).",
        json_schema_extra=meta("dataset"),
    )
    image_column: str = Field(
        "images.txt",
        min_length=1,
        description="Image-to-video: file under --data_root listing one image per clip, in the "
        "order of --video_column (or the image column of a metadata.csv); a clip without one "
        "starts from its own first frame. Beside name.mp4, name.png names it too.",
        json_schema_extra=meta("dataset", advanced=True, image_to_video=True),
    )
    id_token: str | None = Field(
        None,
        description="Trigger word put in front of every caption (for example BW_STYLE).",
        json_schema_extra=meta("dataset"),
    )
    video_resolution_buckets: list[VideoBucket] = Field(
        default_factory=lambda: ["49x480x720"],
        min_length=1,
        description="Training shapes as FxHxW (frames x height x width); each clip goes to the "
        "largest frame count it fills, then the nearest aspect ratio.",
        json_schema_extra=meta("dataset"),
    )
    caption_dropout_p: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Probability of training a step on an empty caption (helps guidance).",
        json_schema_extra=meta("dataset"),
    )
    caption_dropout_technique: Literal["empty", "zero"] = Field(
        "empty",
        description="A dropped caption becomes the empty prompt's embedding or zeros.",
        json_schema_extra=meta("dataset", advanced=True),
    )

    cache_dir: str | None = Field(
        None,
        description="Where encoded clips and captions are kept between runs (default: the "
        "workspace's cache when the app runs the job, else ~/.cache/cogvideox-studio).",
        json_schema_extra=meta("dataset", advanced=True),
    )

    # -- dataloader ----------------------------------------------------------------------------
    dataloader_num_workers: int = Field(
        0,
        ge=0,
        le=64,
        description="Processes that decode clips in the background.",
        json_schema_extra=meta("dataloader"),
    )
    pin_memory: bool = Field(
        False,
        description="Pin host memory of batches for faster copies to the GPU.",
        json_schema_extra=meta("dataloader", advanced=True),
    )
