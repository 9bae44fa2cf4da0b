"""A vision-language model that describes clips, through transformers.

The default is Qwen/Qwen3-VL-8B-Instruct (README, "Automatic captions", says why); any Qwen2-VL,
Qwen2.5-VL or Qwen3-VL checkpoint works, local or from the Hub. Each clip reaches the model as
frames sampled evenly across it, in order, each labelled with its time, as images of one user
message. transformers' video processors (and the Qwen-VL processor classes, which hold one)
need torchvision; this project can't install a CPU build of it here, so the model's own image
processor and tokenizer are used directly and the processor's one Qwen-specific step is done
here: each image placeholder becomes as many image tokens as the image has merged patches.
"""

from __future__ import annotations

import gc
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.data.autocaption import DEFAULT_MODEL, DEFAULT_PROMPT
from core.errors import UserError

SUPPORTED_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
MAX_NEW_TOKENS = 200  # the text encoder reads 226 T5 tokens; a caption stays under that
FRAME_PIXELS = 360 * 640  # each frame is scaled down to at most this area: ~225 tokens a frame


@dataclass
class ClipFrames:
    """Frames of one clip (uint8 [N, H, W, 3]) and the second each was shown at."""

    frames: np.ndarray
    seconds: list[float]
    duration: float


def pick_device() -> torch.device:
    """The GPU the job was given, unless it was told to use the CPU (no GPUs selected)."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return torch.device("cpu")
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


class Captioner:
    def __init__(self, model: str = DEFAULT_MODEL, device: torch.device | None = None):
        from transformers import (
            AutoConfig,
            AutoImageProcessor,
            AutoModelForImageTextToText,
            AutoTokenizer,
        )

        self.name = model
        self.device = device or pick_device()
        try:
            config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as error:
            raise UserError(f"--model: {model} cannot be loaded ({_first_line(error)})") from None
        if config.model_type not in SUPPORTED_TYPES:
            raise UserError(
                f"--model: {model} is a {config.model_type} model; the captioner runs Qwen2-VL, "
                "Qwen2.5-VL and Qwen3-VL checkpoints"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        self.images = AutoImageProcessor.from_pretrained(model)
        self.chat_template = self.tokenizer.chat_template or _processor_chat_template(model)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype)
        self.model.to(self.device).eval()
        self.image_token_id = config.image_token_id
        self.image_token = self.tokenizer.convert_ids_to_tokens(self.image_token_id)

    def prompt_text(self, clip: ClipFrames, prompt: str) -> str:
        """The chat-formatted prompt of one clip, one image placeholder a frame."""
        content = []
        if len(clip.seconds) > 1:
            content.append(
                {
                    "type": "text",
                    "text": f"{len(clip.seconds)} frames of a {clip.duration:.1f}-second video, "
                    "in order:",
                }
            )
            for second in clip.seconds:
                content += [{"type": "text", "text": f"\nAt {second:.1f} s: "}, {"type": "image"}]
        else:
            content.append({"type": "image"})
        content.append({"type": "text", "text": "\n" + prompt})
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=True,
        )

    @torch.inference_mode()
    def describe(
        self,
        clips: list[ClipFrames],
        prompt: str = DEFAULT_PROMPT,
        max_new_tokens: int = MAX_NEW_TOKENS,
    ) -> list[str]:
        """One description per clip: the model's words on one line, control characters gone."""
        from PIL import Image

        texts = [self.prompt_text(clip, prompt) for clip in clips]
        pictures = [_fit(Image.fromarray(frame)) for clip in clips for frame in clip.frames]
        vision = self.images(images=pictures, return_tensors="pt")
        merge = self.images.merge_size**2
        counts = iter((vision["image_grid_thw"].prod(dim=-1) // merge).tolist())
        expanded = []
        for text in texts:
            pieces = text.split(self.image_token)
            text = pieces[0]
            for piece in pieces[1:]:
                text += self.image_token * next(counts) + piece
            expanded.append(text)
        inputs = self.tokenizer(expanded, return_tensors="pt", padding=True)
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.image_token_id).int()
        inputs["pixel_values"] = vision["pixel_values"].to(self.model.dtype)
        inputs["image_grid_thw"] = vision["image_grid_thw"]
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        torch.manual_seed(0)  # the model's own sampling settings, reproducibly
        output = self.model.generate(**inputs, max_new_tokens=max_new_tokens)
        new = output[:, inputs["input_ids"].shape[1] :]
        return [
            one_line(text) for text in self.tokenizer.batch_decode(new, skip_special_tokens=True)
        ]

    def close(self) -> None:
        """Give the GPU memory back at once (a queued training job may be waiting for it)."""
        self.model = None
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def one_line(text: str) -> str:
    """Whitespace collapsed to single spaces, control characters dropped."""
    text = "".join(" " if unicodedata.category(char)[0] in "CZ" else char for char in text)
    return " ".join(text.split())


def _fit(image):
    """Scaled down (never up) to at most FRAME_PIXELS, keeping its shape."""
    area = image.width * image.height
    if area <= FRAME_PIXELS:
        return image
    scale = (FRAME_PIXELS / area) ** 0.5
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def _processor_chat_template(model: str) -> str:
    """The chat template Qwen-VL repos keep for their processor (chat_template.json or .jinja)."""
    import json

    from transformers.utils import cached_file

    for name in ("chat_template.jinja", "chat_template.json"):
        path = cached_file(model, name, _raise_exceptions_for_missing_entries=False)
        if path:
            text = Path(path).read_text(encoding="utf-8")
            return json.loads(text)["chat_template"] if name.endswith(".json") else text
    raise UserError(f"--model: {model} has no chat template")


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__
