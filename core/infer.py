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
import re
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from core.checkpoints import list_checkpoints
from core.config import describe_validation_error
from core.data.video import write_video
from core.errors import EXIT_USER_ERROR, UserError
from core.events import EventWriter, PreviewEvent
from core.models import cogvideox as family
from core.preview_protocol import (
    DONE_DIR,
    OUTPUTS_DIR,
    REQUESTS_DIR,
    LoraChoice,
    PreviewRequest,
)

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
# Transformer settings a finetuned transformer must share with the base whose VAE and text
# encoder it runs beside.
_TRANSFORMER_SHAPE_KEYS = (
    "in_channels",
    "out_channels",
    "text_embed_dim",
    "patch_size",
    "patch_size_t",
    "temporal_compression_ratio",
    "use_rotary_positional_embeddings",
)

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
# Finding the weights a request names


def _check_base(base: str) -> family.ModelSource:
    """The base as a ModelSource, refused at once if it names a local folder that isn't one.

    Without this a mistyped path would be tried as a Hub id and fail late with a network error.
    """
    source = family.ModelSource(base)
    try:
        family.check_source(source)
    except UserError as error:
        # check_source speaks to the trainer's flag; here the setting is the preview's base.
        reason = str(error).split(": ", 1)[-1]
        raise UserError(f"base model: {reason}") from None
    return source


def _transformer_folder(path: str, source: family.ModelSource) -> Path:
    """The folder of a full-finetune transformer: the folder itself, or a run's `transformer/`."""
    folder = Path(path).expanduser()
    if (folder / "transformer" / "config.json").is_file():
        folder = folder / "transformer"  # a run's output folder or one of its checkpoints
    if not (folder / "config.json").is_file():
        if not folder.exists():
            raise UserError(f"the transformer folder {folder} does not exist")
        raise UserError(f"the transformer folder {folder} holds no config.json")
    if source.is_local:
        ours = json.loads((folder / "config.json").read_text())
        base = family.read_component_config(source, "transformer")
        for key in _TRANSFORMER_SHAPE_KEYS:
            if ours.get(key) != base.get(key):
                raise UserError(
                    f"the transformer in {folder} does not fit the base model {source.name}: "
                    f"its {key} is {ours.get(key)}, the base's is {base.get(key)}"
                )
    return folder


def _folder_stamp(folder: Path) -> tuple[int, ...]:
    """Changes when any file in the folder is rewritten (a run saved again to the same place)."""
    return tuple(sorted(p.stat().st_mtime_ns for p in folder.iterdir() if p.is_file()))


@dataclass(frozen=True)
class _LoraFile:
    where: str  # what load_lora_weights is given: a folder or a Hub id
    weight_name: str | None
    stamp: tuple  # changes when the weights on disk change, so a cached adapter goes stale


def _find_lora(path: str) -> _LoraFile:
    """A LoRA folder, a .safetensors file, a training run's folder, or a Hub id."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        stat = candidate.stat()
        return _LoraFile(str(candidate.parent), candidate.name, (stat.st_mtime_ns, stat.st_size))
    if candidate.is_dir():
        weights = candidate / LORA_WEIGHTS
        if not weights.is_file():
            # A run still training has no final weights yet: preview its newest checkpoint.
            checkpoints = [
                c for _, c in list_checkpoints(candidate) if (c / LORA_WEIGHTS).is_file()
            ]
            if not checkpoints:
                raise UserError(f"the LoRA folder {candidate} holds no {LORA_WEIGHTS}")
            weights = checkpoints[-1] / LORA_WEIGHTS
        stat = weights.stat()
        return _LoraFile(str(weights.parent), LORA_WEIGHTS, (stat.st_mtime_ns, stat.st_size))
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) and not path.startswith((".", "~")):
        return _LoraFile(path, None, ())  # a Hub id: diffusers fetches it (or finds it cached)
    raise UserError(f"the LoRA {path} does not exist")


def _lora_error(path: str, base: str, error: Exception) -> UserError:
    """One sentence for a LoRA that diffusers refused, naming the first mismatched layer."""
    text = str(error)
    mismatch = re.search(
        r"size mismatch for ([\w.]+?)\.(lora_[AB])\.[\w-]+\.weight: copying a param with shape "
        r"torch\.Size\((\[[\d, ]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[\d, ]*\])\)",
        text,
    )
    if mismatch:
        layer, matrix, theirs, ours = mismatch.groups()
        return UserError(
            f"the LoRA {path} does not fit the base model {base}: its {matrix} for the layer "
            f"{layer} has shape {theirs} where the base needs {ours}"
        )
    return UserError(f"the LoRA {path} does not load into {base} ({_first_line(error)})")


def check_request(request: PreviewRequest) -> None:
    """Refuse, in one sentence, a request naming weights that aren't there (nothing is loaded)."""
    source = _check_base(request.base)
    if request.transformer:
        _transformer_folder(request.transformer, source)
    for lora in request.loras:
        _find_lora(lora.path)


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
        self.key: tuple | None = None
        self.base_loads = 0
        self._adapters: dict[str, tuple[tuple, str]] = {}  # path -> (stamp, name), oldest first
        self._names = itertools.count()

    def _key(self, request: PreviewRequest) -> tuple:
        source = family.ModelSource(request.base)
        transformer = None
        if request.transformer:
            folder = _transformer_folder(request.transformer, source)
            transformer = (str(folder.resolve()), _folder_stamp(folder))
        return (source.location, transformer, request.dtype, str(self.device))

    def pipeline_for(self, request: PreviewRequest, on_load: Callable[[], None] | None = None):
        """The request's base pipeline: the one already loaded, or a fresh load."""
        _check_base(request.base)  # before anything is freed: a typo must not cost the warm base
        key = self._key(request)
        if key != self.key:
            self.clear()  # freed first: the old and the new base rarely fit side by side
            if on_load:
                on_load()
            self.pipeline = _load_pipeline(request, self.device)
            self.key = key
            self.base_loads += 1
        return self.pipeline

    def clear(self) -> None:
        """Drop the loaded pipeline and give its memory back."""
        self.pipeline, self.key = None, None
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
        lora = _find_lora(path)
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
            raise _lora_error(path, self.key[0], error) from None
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
    from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Per-component loading bars would flood the worker's log; it reports "loading" as an event.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()

    source = _check_base(request.base)
    dtype = family.DTYPES[request.dtype]
    components = {}
    if request.transformer:
        folder = _transformer_folder(request.transformer, source)
        try:
            components["transformer"] = CogVideoXTransformer3DModel.from_pretrained(
                folder, dtype=dtype
            )
        except (OSError, ValueError) as error:
            raise UserError(
                f"could not load the transformer in {folder} ({_first_line(error)})"
            ) from None
    try:
        pipeline = CogVideoXPipeline.from_pretrained(
            source.location, dtype=dtype, **source.kwargs(), **components
        )
    except (OSError, ValueError) as error:
        raise UserError(
            f"could not load the base model {request.base} ({_first_line(error)})"
        ) from None
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
    return pipeline


# ---------------------------------------------------------------------------------------------
# Rendering


def _render(pipeline, request: PreviewRequest, on_step: Callable[[], None]) -> np.ndarray:
    """One video, uint8 [F, H, W, 3], from the pipeline with its adapters as they are now."""

    def step_end(_pipeline, _step, _timestep, tensors):
        on_step()
        return tensors

    # A CPU generator: the same seed gives the same noise on any device, so a panel rendered on
    # the GPU matches one rendered on the CPU, and every panel of a grid starts from the same noise.
    generator = torch.Generator("cpu").manual_seed(request.seed)
    frames = pipeline(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt or None,
        num_frames=request.frames,
        height=request.height,
        width=request.width,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        generator=generator,
        output_type="np",
        callback_on_step_end=step_end,
        max_sequence_length=family.MAX_TEXT_TOKENS,
    ).frames[0]
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def _label(frames: np.ndarray, text: str) -> np.ndarray:
    """The frames with a caption on a dark box in the top-left corner.

    Pillow's built-in font, sized to the panel: nothing to download, readable at 480p.
    """
    from PIL import Image, ImageDraw, ImageFont

    height = frames.shape[1]
    font = ImageFont.load_default(size=max(10, height // 24))
    labelled = np.empty_like(frames)
    for index, frame in enumerate(frames):
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        margin = max(2, height // 96)
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
    pipeline = cache.pipeline_for(request, on_load=lambda: status("loading"))
    cache.use_loras(request.loras)  # loaded before "generating": a LoRA that won't fit fails here
    status("generating")
    if request.compare_scales:
        labels = panel_labels(request)
        panels = []
        for scale, label in zip([None, *request.compare_scales], labels, strict=True):
            cache.use_loras([] if scale is None else request.loras, scale)
            panels.append(_label(_render(pipeline, request, step_done), label))
        video = np.concatenate(panels, axis=2)  # side by side: the same frames, a wider picture
    else:
        video = _render(pipeline, request, step_done)
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
# The warm worker


class _Stopped(BaseException):
    """SIGTERM or SIGINT arrived while a preview was being made.

    A BaseException, like KeyboardInterrupt, so that no `except Exception` on the way up turns
    a stop into an ordinary failure.
    """


class _StopSignals:
    """SIGTERM/SIGINT: between requests, stop after the loop's current wait; during a request,
    abandon it at once (the next Python bytecode, i.e. after the running torch op)."""

    def __init__(self):
        self.requested = False
        self._busy = False
        self._previous = {
            signum: signal.signal(signum, self._handle)
            for signum in (signal.SIGINT, signal.SIGTERM)
        }

    def _handle(self, _signum, _frame) -> None:
        self.requested = True
        if self._busy:
            self._busy = False
            raise _Stopped

    @contextmanager
    def abandonable(self) -> Iterator[None]:
        self._busy = True
        try:
            if self.requested:
                raise _Stopped
            yield
        finally:
            self._busy = False

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _next_request(inbox: Path) -> Path | None:
    """The oldest request file (by the time it was written, then by name), or None."""
    pending = []
    for path in inbox.glob("*.json"):
        with suppress(FileNotFoundError):  # taken back by its client meanwhile
            pending.append((path.stat().st_mtime_ns, path.name, path))
    return min(pending)[2] if pending else None


def _describe_request_error(error: ValidationError) -> str:
    first = error.errors()[0]
    if first.get("type") == "json_invalid":
        return f"the request is not valid JSON ({first.get('msg', '')})"
    if first.get("type") == "extra_forbidden":
        field = ".".join(str(part) for part in first.get("loc", ()))
        return f"the request has a field this worker does not know: {field}"
    return "the request's " + describe_validation_error(error).lstrip("-")


def serve(worker_dir: str | Path, idle_timeout: float = 600.0, poll_seconds: float = 0.2) -> int:
    """Answer preview requests in worker_dir, oldest first, until idle for idle_timeout seconds
    or stopped by SIGTERM/SIGINT. Returns the exit status (0)."""
    worker_dir = Path(worker_dir)
    inbox = worker_dir / REQUESTS_DIR
    (inbox / DONE_DIR).mkdir(parents=True, exist_ok=True)
    (worker_dir / OUTPUTS_DIR).mkdir(parents=True, exist_ok=True)
    stop = _StopSignals()
    events = EventWriter(worker_dir)
    cache = PipelineCache()
    print(
        f"preview worker: serving {inbox} on {cache.device}, "
        f"exiting after {idle_timeout:g} s without requests",
        flush=True,
    )
    idle_since = time.monotonic()
    try:
        while not stop.requested:
            path = _next_request(inbox)
            if path is None:
                if time.monotonic() - idle_since >= idle_timeout:
                    print("preview worker: idle, exiting to free its memory", flush=True)
                    break
                time.sleep(poll_seconds)
                continue
            _serve_one(path, worker_dir, cache, events, stop)
            idle_since = time.monotonic()
        if stop.requested:
            print("preview worker: stopped", flush=True)
    finally:
        events.close()
        stop.restore()
    return 0


def _serve_one(
    path: Path, worker_dir: Path, cache: PipelineCache, events: EventWriter, stop: _StopSignals
) -> None:
    """One request, start to final event; whatever goes wrong, the worker goes on serving."""
    request_id = path.stem
    received = time.perf_counter()
    first_step: list[float] = []

    def emit(status: str, **fields) -> None:
        event = PreviewEvent(
            request_id=request_id, status=status, base_loads=cache.base_loads, **fields
        )
        events.emit(event)

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return  # taken back by its client (to hand it to another worker): not ours to answer
    emit("started")
    try:
        request = PreviewRequest.model_validate_json(text)
        out = worker_dir / OUTPUTS_DIR / f"{request_id}.mp4"
        with stop.abandonable():
            result = generate(
                request,
                cache,
                out,
                on_first_step=lambda: first_step.append(time.perf_counter() - received),
                on_status=emit,
            )
    except _Stopped:
        message = "the preview worker was stopped before this preview was finished"
    except ValidationError as error:
        message = _describe_request_error(error)
    except UserError as error:
        message = str(error)
    except Exception as error:  # a bug or an out-of-memory must not take the worker down
        traceback.print_exc()
        cache.clear()  # its state after an unexpected error is unknown: start the next one clean
        message = f"the preview failed: {type(error).__name__}: {_first_line(error)}"
    else:
        message = None
    if message is None:
        files = [result.path, result.settings_path]
        emit(
            "done",
            files=[str(file.relative_to(worker_dir)) for file in files],
            seconds=time.perf_counter() - received,
            first_step_seconds=first_step[0] if first_step else None,
        )
        print(f"preview {request_id}: done in {time.perf_counter() - received:.1f} s", flush=True)
    else:
        emit("failed", message=message, seconds=time.perf_counter() - received)
        print(f"preview {request_id}: failed: {message}", flush=True)
    with suppress(FileNotFoundError):
        path.replace(worker_dir / REQUESTS_DIR / DONE_DIR / path.name)


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] if len(lines[0]) <= 200 else lines[0][:197] + "..."


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
        return serve(args.dir, args.idle_timeout)
    try:
        if Path(args.out).suffix.lower() != ".mp4":
            raise UserError(f"--out: {args.out} must name an .mp4 file")
        request = PreviewRequest(
            base=args.base,
            loras=[_lora_argument(text) for text in args.lora],
            transformer=args.transformer,
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
