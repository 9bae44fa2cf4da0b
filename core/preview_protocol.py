"""Preview requests and results between the web process and the warm preview worker. Torch-free.

The worker's folder is the whole protocol:

    WORKER_DIR/requests/<id>.json       a PreviewRequest; written under a temporary name, renamed
    WORKER_DIR/requests/done/<id>.json  the request, moved there once answered (done or failed)
    WORKER_DIR/outputs/<id>.mp4         the preview (a side-by-side grid when comparing scales)
    WORKER_DIR/outputs/<id>.json        the request's settings, seconds taken and base loads
    WORKER_DIR/events.jsonl             PreviewEvents: started, loading, generating, done/failed

A client calls `submit` and then `result` until it returns the final event; the worker
(`python -m core.infer serve --dir WORKER_DIR`) takes requests oldest first. This module imports
no torch: the web process builds requests.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.config import (
    SPATIAL_MULTIPLE,
    TEMPORAL_COMPRESSION,
    nearest_multiples,
    nearest_valid_frames,
)
from core.events import EVENTS_FILE, PreviewEvent, parse_event

REQUESTS_DIR = "requests"
DONE_DIR = "done"  # under REQUESTS_DIR
OUTPUTS_DIR = "outputs"
FINAL_STATUSES = frozenset({"done", "failed"})
MAX_COMPARE_SCALES = 8  # panels beyond the base; wider grids stop being readable


class LoraChoice(BaseModel):
    """One LoRA to apply: a folder holding pytorch_lora_weights.safetensors, a file, or a Hub id.

    A training run's folder also works while it trains: its newest checkpoint is used until the
    final weights exist.
    """

    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="LoRA folder, .safetensors file or Hub id")
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="0 gives the model without the LoRA")


class PreviewRequest(BaseModel):
    """Everything one preview depends on; the same request always renders the same video."""

    model_config = ConfigDict(extra="forbid")

    base: str = Field(min_length=1, description="base model: Hub id or local diffusers folder")
    loras: list[LoraChoice] = Field(default_factory=list)
    transformer: str | None = Field(
        None, description="a full-finetune transformer folder used instead of the base's"
    )
    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    frames: int = Field(49, ge=1, le=257)
    height: int = Field(480, ge=SPATIAL_MULTIPLE, le=2048)
    width: int = Field(720, ge=SPATIAL_MULTIPLE, le=2048)
    steps: int = Field(50, ge=1, le=1000)
    guidance: float = Field(6.0, ge=0.0, le=50.0)
    seed: int = Field(42, ge=0, le=2**63 - 1)
    image: str | None = Field(
        None,
        description="image-to-video bases: the image file the video starts from (resized to "
        "cover the frame and center-cropped, as training images are)",
    )
    ignore_learned_positional_embeddings: bool = Field(
        False,
        description="run the base without its learned positional embeddings, as a LoRA trained "
        "with --ignore_learned_positional_embeddings was",
    )
    compare_scales: list[float] = Field(
        default_factory=list,
        max_length=MAX_COMPARE_SCALES,
        description="side by side: the base without LoRA, then the LoRAs at each of these scales",
    )
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    fps: int = Field(8, ge=1, le=120)
    allow_busy_gpu: bool = Field(
        False, description="may run beside a training job on the same GPU (scheduling only)"
    )

    @field_validator("frames")
    @classmethod
    def _frames_rule(cls, frames: int) -> int:
        if (frames - 1) % TEMPORAL_COMPRESSION:
            nearest = " or ".join(str(v) for v in nearest_valid_frames(frames))
            raise ValueError(f"CogVideoX needs 4k+1 frames; the nearest are {nearest}")
        return frames

    @field_validator("height", "width")
    @classmethod
    def _size_rule(cls, side: int) -> int:
        if side % SPATIAL_MULTIPLE:
            nearest = " or ".join(str(v) for v in nearest_multiples(side))
            raise ValueError(f"must be a multiple of {SPATIAL_MULTIPLE}; the nearest are {nearest}")
        return side

    @field_validator("loras")
    @classmethod
    def _distinct_loras(cls, loras: list[LoraChoice]) -> list[LoraChoice]:
        paths = [lora.path for lora in loras]
        repeated = next((path for path in paths if paths.count(path) > 1), None)
        if repeated is not None:
            raise ValueError(f"the LoRA {repeated} is listed twice; give it one scale")
        return loras

    @field_validator("compare_scales")
    @classmethod
    def _compare_needs_a_lora(cls, scales: list[float], info: ValidationInfo) -> list[float]:
        if scales and not info.data.get("loras"):
            raise ValueError("comparing scales needs a LoRA to compare with the base")
        if any(not -4.0 <= scale <= 4.0 for scale in scales):
            raise ValueError("scales must lie between -4 and 4")
        return scales


def new_request_id() -> str:
    """Sortable by submission time, unique without coordination between clients."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


def submit(worker_dir: str | Path, request: PreviewRequest) -> str:
    """Drop a request into the worker's folder (atomically: the worker never sees half a file);
    returns its id."""
    folder = Path(worker_dir) / REQUESTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    request_id = new_request_id()
    # The temporary name does not end in .json, so the worker's glob skips it until the rename.
    temporary = folder / f".{request_id}.json.partial"
    temporary.write_text(request.model_dump_json(indent=2), encoding="utf-8")
    temporary.replace(folder / f"{request_id}.json")
    return request_id


def result(worker_dir: str | Path, request_id: str, final_only: bool = True) -> PreviewEvent | None:
    """The request's final event (done or failed), or None while it is pending; with
    `final_only=False`, its latest event so far (started, loading, generating, ...)."""
    path = Path(worker_dir) / EVENTS_FILE
    if not path.is_file():
        return None
    final = None
    needle = request_id.encode()
    with open(path, "rb") as handle:
        for line in handle:
            if needle not in line:  # skip parsing other requests' events
                continue
            event = parse_event(line)
            if (
                isinstance(event, PreviewEvent)
                and event.request_id == request_id
                and (event.status in FINAL_STATUSES or not final_only)
            ):
                final = event
    return final
