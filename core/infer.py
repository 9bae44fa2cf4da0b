"""Inference previews: a LoRA (or a finetuned transformer) beside its base model.

    python -m core.infer generate --base DIR_OR_ID [--lora PATH[:SCALE] ...] --prompt TEXT \\
        [--compare 0.5,1.0] --out FILE.mp4
    python -m core.infer serve --dir WORKER_DIR [--idle-timeout SECONDS]

`generate` renders one preview and exits. `serve` is the warm worker the app runs as a job: it
keeps the last base pipeline loaded, so a second preview on the same base only swaps LoRAs
(diffusers adapters, megabytes) instead of reloading the base (gigabytes), and it exits after an
idle timeout to give the GPU memory back. Requests and results travel as files in the worker's
folder; core/preview_protocol.py describes the layout and is what clients import.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from core.config import describe_validation_error
from core.data.video import write_video
from core.errors import EXIT_USER_ERROR, UserError
from core.models.common import DTYPES, LORA_FILE
from core.models.registry import identify, open_family
from core.models.source import ModelSource
from core.preview_protocol import (
    LoraChoice,
    PreviewRequest,
)
from core.preview_weights import (
    check_base,
    check_request,
    find_lora,
    first_line,
    folder_stamp,
    lora_error,
    transformer_folder,
)

LORA_WEIGHTS = LORA_FILE

StatusCallback = Callable[[str], None]


@dataclass(frozen=True)
class PreviewResult:
    path: Path  # the mp4
    settings_path: Path  # the JSON beside it
    seconds: float  # generate() called to files written
    first_step_seconds: float | None  # generate() called to the end of the first denoising step
    base_loads: int  # the cache's base loads so far, this preview's included
    panels: list[str]  # the grid's labels, left to right; one entry for a single preview


def pick_device() -> torch.device:
    """The accelerator if there is one, unless the job was told to use the CPU.

    A job without GPUs gets ACCELERATE_USE_CPU from the job runner; honouring it keeps a CPU
    preview worker off a GPU that a training job holds.
    """
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return torch.device("cpu")
    if torch.accelerator.is_available():
        return torch.accelerator.current_accelerator()
    return torch.device("cpu")


# ---------------------------------------------------------------------------------------------
# The pipeline cache


class PipelineCache:
    """The last base pipeline, kept loaded; LoRAs come and go as named diffusers adapters.

    Only one base is kept: two 5B pipelines rarely fit one GPU. Up to `max_adapters` LoRAs stay
    loaded so that flipping between a few runs costs no disk reads; a LoRA whose file changed on
    disk since it was loaded (its run saved again) is loaded afresh.
    """

    def __init__(self, device: torch.device | str | None = None, max_adapters: int = 4):
        self.device = torch.device(device) if device is not None else pick_device()
        self.max_adapters = max(1, max_adapters)
        self.pipeline = None
        self.family = None  # the loaded base's model family object
        self.key: tuple | None = None
        self.base_loads = 0
        self._adapters: dict[str, tuple[tuple, str]] = {}  # path -> (stamp, name), oldest first
        self._names = itertools.count()

    def _key(self, request: PreviewRequest) -> tuple:
        source = ModelSource(request.base)
        transformer = None
        if request.transformer:
            folder = transformer_folder(request.transformer, source)
            transformer = (str(folder.resolve()), folder_stamp(folder))
        # Dropping learned positions changes the loaded transformer: another key.
        learned = not request.ignore_learned_positional_embeddings
        return (source.location, transformer, request.dtype, str(self.device), learned)

    def pipeline_for(self, request: PreviewRequest, on_load: Callable[[], None] | None = None):
        """The request's base pipeline: the one already loaded, or a fresh load."""
        check_base(request.base)  # before anything is freed: a typo must not cost the warm base
        key = self._key(request)
        if key != self.key:
            self.clear()  # freed first: the old and the new base rarely fit side by side
            if on_load:
                on_load()
            self.family, self.pipeline = _load_pipeline(request, self.device)
            self.key = key
            self.base_loads += 1
        return self.pipeline

    def clear(self) -> None:
        """Drop the loaded pipeline and give its memory back."""
        self.pipeline, self.family, self.key = None, None, None
        self._adapters.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def use_loras(self, loras: list[LoraChoice], scale: float | None = None) -> None:
        """Make exactly these LoRAs active, each at its own scale (or all at `scale`)."""
        names = [self._adapter(lora.path) for lora in loras]
        weights = [lora.scale if scale is None else scale for lora in loras]
        self._evict(keep=set(names))
        if not names or not any(weights):
            # Disabled adapters leave the base layers alone: exactly the base model's output.
            if self._adapters:
                self.pipeline.disable_lora()
            return
        self.pipeline.enable_lora()
        self.pipeline.set_adapters(names, weights)

    def _adapter(self, path: str) -> str:
        """The adapter name of a LoRA, loading it unless an up-to-date copy is loaded."""
        lora = find_lora(path)
        cached = self._adapters.pop(path, None)
        if cached is not None:
            stamp, name = cached
            if stamp == lora.stamp:
                self._adapters[path] = cached  # re-inserted: most recently used last
                return name
            self.pipeline.delete_adapters(name)  # the file changed since: load it again
        name = f"lora{next(self._names)}"
        try:
            self.pipeline.load_lora_weights(
                lora.where, weight_name=lora.weight_name, adapter_name=name
            )
        except Exception as error:  # diffusers and peft raise many types; all mean "won't load"
            raise lora_error(path, self.key[0], error) from None
        self._adapters[path] = (lora.stamp, name)
        return name

    def _evict(self, keep: set[str]) -> None:
        for path, (_, name) in list(self._adapters.items()):
            if len(self._adapters) <= self.max_adapters:
                break
            if name not in keep:
                self.pipeline.delete_adapters(name)
                del self._adapters[path]


def _load_pipeline(request: PreviewRequest, device: torch.device):
    """(the base's model family object, its pipeline) on `device`, ready to render."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Per-component loading bars would flood the worker's log; it reports "loading" as an event.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    source = check_base(request.base)
    dtype = DTYPES[request.dtype]
    try:
        family = open_family(identify(source))
    except UserError as error:
        reason = str(error).split(": ", 1)[-1]  # it speaks to the trainer's flag
        raise UserError(f"base model: {reason}") from None
    transformer = None
    if request.transformer:
        folder = transformer_folder(request.transformer, source)
        try:
            transformer = family.load_transformer_folder(folder, dtype)
        except (OSError, ValueError) as error:
            raise UserError(
                f"could not load the transformer in {folder} ({first_line(error)})"
            ) from None
    try:
        pipeline = family.load_pipeline(dtype, transformer)
    except (OSError, ValueError) as error:
        raise UserError(
            f"could not load the base model {request.base} ({first_line(error)})"
        ) from None
    if request.ignore_learned_positional_embeddings:
        family.drop_learned_positions(pipeline.transformer)
    pipeline.set_progress_bar_config(disable=True)
    # Decoding 49 frames at 480x720 in one piece needs more memory than the denoising itself.
    pipeline.vae.enable_slicing()
    pipeline.vae.enable_tiling()
    if device.type == "cpu":
        pipeline.to(device)
    else:
        # Only the component at work sits on the GPU. This raises without an accelerator, hence
        # the CPU branch above.
        pipeline.enable_model_cpu_offload(device=device)
    return family, pipeline


# ---------------------------------------------------------------------------------------------
# Rendering


def _render(
    cache: PipelineCache, request: PreviewRequest, on_step: Callable[[], None]
) -> np.ndarray:
    """One video, uint8 [F, H, W, 3], from the pipeline with its adapters as they are now."""
    # A CPU generator: the same seed gives the same noise on any device, so a panel rendered on
    # the GPU matches one rendered on the CPU, and every panel of a grid starts from the same noise.
    generator = torch.Generator("cpu").manual_seed(request.seed)
    frames = cache.family.render(
        cache.pipeline,
        image=_start_image(request),
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        frames=request.frames,
        height=request.height,
        width=request.width,
        steps=request.steps,
        guidance=request.guidance,
        generator=generator,
        on_step=on_step,
    )
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def _start_image(request: PreviewRequest):
    """The request's image (image-to-video) at the preview's size, as a PIL image, or None."""
    if not request.image:
        return None
    from core.data.dataset import load_condition_image, to_pil

    path = Path(request.image).expanduser()
    return to_pil(load_condition_image(path, request.height, request.width))


def _check_shape(cache: PipelineCache, request: PreviewRequest) -> None:
    """The base's shape rules (the 5b-I2V's learned positions fit one shape) before rendering."""
    problem = cache.family.rules.shape_problem(
        request.frames,
        request.height,
        request.width,
        ignore_learned_positions=request.ignore_learned_positional_embeddings,
    )
    if problem:
        raise UserError(f"the preview's size: {problem}")


def _label(frames: np.ndarray, text: str) -> np.ndarray:
    """The frames with a caption on a dark box in the top-left corner.

    Pillow's built-in font, sized to the panel: nothing to download, readable at 480p; on a
    panel narrower than the caption at that size, as large as still fits (the page also names
    the panels above the video).
    """
    from PIL import Image, ImageDraw, ImageFont

    height, width = frames.shape[1:3]
    margin = max(2, height // 96)
    size = max(10, height // 24)
    font = ImageFont.load_default(size=size)
    while size > 6 and font.getlength(text) > width - 2 * margin:
        size -= 1
        font = ImageFont.load_default(size=size)
    labelled = np.empty_like(frames)
    for index, frame in enumerate(frames):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((margin, margin), text, font=font)
        draw.rectangle((0, 0, box[2] + margin, box[3] + margin), fill=(0, 0, 0))
        draw.text((margin, margin), text, fill=(255, 255, 255), font=font)
        labelled[index] = np.asarray(image)
    return labelled


def panel_labels(request: PreviewRequest) -> list[str]:
    """The grid's captions, left to right: the base, then the LoRAs at each compared scale."""
    return ["base", *(f"LoRA x{scale:g}" for scale in request.compare_scales)]


def generate(
    request: PreviewRequest,
    cache: PipelineCache,
    out_path: str | Path,
    on_first_step: Callable[[], None] | None = None,
    *,
    on_status: StatusCallback | None = None,
) -> PreviewResult:
    """Render a preview (or, with compare_scales, a side-by-side grid) to an mp4.

    `<out>.json` beside it records the request, the seconds taken and the base loads.
    `on_first_step` is called once, when the first denoising step ends; `on_status` gets
    "loading" before a base is loaded and "generating" once the LoRAs are in place.
    """
    started = time.perf_counter()
    first_step: list[float] = []

    def step_done() -> None:
        if not first_step:
            first_step.append(time.perf_counter() - started)
            if on_first_step:
                on_first_step()

    def status(name: str) -> None:
        if on_status:
            on_status(name)

    check_request(request)  # a typo fails in milliseconds, before any weights move
    cache.pipeline_for(request, on_load=lambda: status("loading"))
    _check_shape(cache, request)
    cache.use_loras(request.loras)  # loaded before "generating": a LoRA that won't fit fails here
    status("generating")
    if request.compare_scales:
        labels = panel_labels(request)
        panels = []
        for scale, label in zip([None, *request.compare_scales], labels, strict=True):
            cache.use_loras([] if scale is None else request.loras, scale)
            panels.append(_label(_render(cache, request, step_done), label))
        video = np.concatenate(panels, axis=2)  # side by side: the same frames, a wider picture
    else:
        video = _render(cache, request, step_done)
        labels = ["LoRA" if request.loras else "base"]

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_video(out_path, video, fps=request.fps)
    seconds = time.perf_counter() - started
    settings_path = out_path.with_suffix(".json")
    settings = {
        **request.model_dump(mode="json"),
        "seconds": round(seconds, 3),
        "first_step_seconds": round(first_step[0], 3) if first_step else None,
        "base_loads": cache.base_loads,
        "device": str(cache.device),
        "panels": labels,
    }
    settings_path.write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")
    return PreviewResult(
        path=out_path,
        settings_path=settings_path,
        seconds=seconds,
        first_step_seconds=first_step[0] if first_step else None,
        base_loads=cache.base_loads,
        panels=labels,
    )


# ---------------------------------------------------------------------------------------------
# The command line


def _lora_argument(text: str) -> LoraChoice:
    """PATH or PATH:SCALE; a colon not followed by a number belongs to the path."""
    path, colon, scale = text.rpartition(":")
    if colon and path:
        try:
            value = float(scale)
        except ValueError:
            pass
        else:
            return LoraChoice(path=path, scale=value)
    return LoraChoice(path=text)


def _scales_argument(text: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",") if value.strip()]
    except ValueError:
        raise UserError(f"--compare: '{text}' is not a list of scales such as 0.5,1.0") from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m core.infer", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("generate", help="render one preview to an mp4")
    one.add_argument("--base", required=True, help="Hub id or local diffusers folder")
    one.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="PATH[:SCALE]",
        help="LoRA folder, file or Hub id, scale 1 unless given; repeat for several",
    )
    one.add_argument("--transformer", help="a full-finetune transformer folder")
    one.add_argument("--image", help="image-to-video bases: the image the video starts from")
    one.add_argument(
        "--ignore_learned_positional_embeddings",
        action="store_true",
        help="run the base without its learned positional embeddings (as the LoRA was trained)",
    )
    one.add_argument("--prompt", required=True)
    one.add_argument("--negative_prompt", default="")
    for name, default in (("frames", 49), ("height", 480), ("width", 720), ("steps", 50)):
        one.add_argument(f"--{name}", type=int, default=default)
    one.add_argument("--guidance", type=float, default=6.0)
    one.add_argument("--seed", type=int, default=42)
    one.add_argument("--fps", type=int, default=8)
    one.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    one.add_argument(
        "--compare", default="", metavar="SCALES", help="side by side with the base: 0.5,1.0"
    )
    one.add_argument("--out", required=True, help="the .mp4 to write (settings go beside it)")
    worker = commands.add_parser("serve", help="the warm preview worker")
    worker.add_argument("--dir", required=True, help="the worker's folder")
    worker.add_argument("--idle-timeout", type=float, default=600.0, metavar="SECONDS")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        from core.preview_worker import serve

        return serve(args.dir, args.idle_timeout)
    try:
        if Path(args.out).suffix.lower() != ".mp4":
            raise UserError(f"--out: {args.out} must name an .mp4 file")
        request = PreviewRequest(
            base=args.base,
            loras=[_lora_argument(text) for text in args.lora],
            transformer=args.transformer,
            image=args.image,
            ignore_learned_positional_embeddings=args.ignore_learned_positional_embeddings,
            prompt=args.prompt,
            negative_prompt=args.negative_prompt,
            frames=args.frames,
            height=args.height,
            width=args.width,
            steps=args.steps,
            guidance=args.guidance,
            seed=args.seed,
            fps=args.fps,
            dtype=args.dtype,
            compare_scales=_scales_argument(args.compare),
        )
        result = generate(request, PipelineCache(), args.out)
    except ValidationError as error:
        message = describe_validation_error(error)
        # The request's field names, as the flags that set them are spelled.
        for field, flag in (("compare_scales", "compare"), ("loras", "lora")):
            message = message.replace(f"--{field}", f"--{flag}", 1)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
