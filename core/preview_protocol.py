"""Preview requests and results between the web process and the warm preview worker. Torch-free.

A client writes a request as `<worker dir>/requests/<id>.json` (a temporary name, then a rename);
the worker (`python -m core.infer serve --dir <worker dir>`) takes requests oldest first, writes
`<worker dir>/outputs/<id>.mp4` and appends `PreviewEvent`s to `<worker dir>/events.jsonl`.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.config import SPATIAL_MULTIPLE, TEMPORAL_COMPRESSION
from core.events import EVENTS_FILE, PreviewEvent, parse_event

REQUESTS_DIR = "requests"
OUTPUTS_DIR = "outputs"


class LoraChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1, description="LoRA folder, .safetensors file or Hub id")
    scale: float = Field(1.0, ge=-4.0, le=4.0)


class PreviewRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base: str = Field(min_length=1, description="base model: Hub id or local diffusers folder")
    loras: list[LoraChoice] = Field(default_factory=list)
    transformer: str | None = Field(None, description="a full-finetune transformer folder")
    prompt: str = Field(min_length=1)
    negative_prompt: str = ""
    frames: int = Field(49, ge=1, le=257)
    height: int = Field(480, ge=SPATIAL_MULTIPLE, multiple_of=SPATIAL_MULTIPLE)
    width: int = Field(720, ge=SPATIAL_MULTIPLE, multiple_of=SPATIAL_MULTIPLE)
    steps: int = Field(50, ge=1, le=1000)
    guidance: float = Field(6.0, ge=0.0, le=50.0)
    seed: int = Field(42, ge=0)
    compare_scales: list[float] = Field(
        default_factory=list,
        description="side by side: the base without LoRA, then the LoRA at each scale",
    )
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    fps: int = Field(8, ge=1, le=120)
    allow_busy_gpu: bool = False

    @field_validator("frames")
    @classmethod
    def _frames_rule(cls, frames: int) -> int:
        if (frames - 1) % TEMPORAL_COMPRESSION:
            raise ValueError(
                f"CogVideoX needs 4k+1 frames, such as "
                f"{(frames - 1) // 4 * 4 + 1} or {(frames - 1) // 4 * 4 + 5}"
            )
        return frames


def submit(worker_dir: str | Path, request: PreviewRequest) -> str:
    """Drop a request for the worker; returns its id."""
    folder = Path(worker_dir) / REQUESTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    request_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    temporary = folder / f".{request_id}.json.partial"
    temporary.write_text(request.model_dump_json(indent=2), encoding="utf-8")
    temporary.replace(folder / f"{request_id}.json")
    return request_id


def result(worker_dir: str | Path, request_id: str) -> PreviewEvent | None:
    """The request's final event (done or failed), or None while it is pending."""
    path = Path(worker_dir) / EVENTS_FILE
    if not path.is_file():
        return None
    final = None
    with open(path, "rb") as handle:
        for line in handle:
            if request_id.encode() not in line:
                continue
            event = parse_event(line)
            if (
                isinstance(event, PreviewEvent)
                and event.request_id == request_id
                and event.status in ("done", "failed")
            ):
                final = event
    return final
