"""Inference previews: a LoRA (or a finetuned transformer) beside its base model.

    python -m core.infer generate --base DIR_OR_ID [--lora PATH[:SCALE]] --prompt TEXT --out F
    python -m core.infer serve --dir WORKER_DIR [--idle-timeout SECONDS]

`serve` is the warm worker the app runs as a job: it keeps the last base pipeline loaded, so a
second preview on the same base only swaps LoRAs (diffusers adapters) instead of reloading
gigabytes, and it exits after an idle timeout to give the GPU memory back. Requests and results
travel as files (core/preview_protocol.py).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from core.config import describe_validation_error
from core.data.video import write_video
from core.errors import EXIT_USER_ERROR, UserError
from core.events import EventWriter, PreviewEvent
from core.models import cogvideox as family
from core.preview_protocol import OUTPUTS_DIR, REQUESTS_DIR, LoraChoice, PreviewRequest

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"


@dataclass
class PreviewResult:
    path: Path
    seconds: float
    first_step_seconds: float | None
    base_loads: int


class PipelineCache:
    """The last base pipeline, kept loaded; LoRAs come and go as named adapters."""

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.key: tuple | None = None
        self.pipeline = None
        self.base_loads = 0
        self.adapters: dict[str, str] = {}  # LoRA location -> adapter name

    def get(self, request: PreviewRequest, on_load=None):
        key = (request.base, request.transformer, request.dtype)
        if key != self.key:
            self.pipeline, self.key = None, None  # freed first: two bases rarely fit at once
            if on_load:
                on_load()
            self.pipeline = self._load(request)
            self.key, self.adapters = key, {}
            self.base_loads += 1
        return self.pipeline

    def _load(self, request: PreviewRequest):
        from diffusers import CogVideoXPipeline, CogVideoXTransformer3DModel

        source = family.ModelSource(request.base)
        family.check_source(source)
        dtype = family.DTYPES[request.dtype]
        extra = {}
        if request.transformer:
            folder = Path(request.transformer).expanduser()
            if not (folder / "config.json").is_file():
                raise UserError(f"the transformer folder {folder} holds no config.json")
            extra["transformer"] = CogVideoXTransformer3DModel.from_pretrained(folder, dtype=dtype)
        try:
            pipeline = CogVideoXPipeline.from_pretrained(source.location, dtype=dtype, **extra)
        except (OSError, ValueError) as error:
            raise UserError(
                f"could not load the base model {request.base} ({str(error).splitlines()[0][:200]})"
            ) from None
        pipeline.vae.enable_slicing()
        pipeline.vae.enable_tiling()
        pipeline.set_progress_bar_config(disable=True)
        if self.device.type == "cuda":
            pipeline.enable_model_cpu_offload()  # raises without an accelerator: CUDA only
        else:
            pipeline.to(self.device)
        return pipeline

    def use_loras(self, loras: list[LoraChoice], scale: float | None = None) -> None:
        """Make exactly these LoRAs active (at their scales, or all at `scale`)."""
        pipeline = self.pipeline
        names = []
        for lora in loras:
            location = _lora_location(lora.path)
            if location not in self.adapters:
                name = f"lora_{len(self.adapters)}"
                where, weight_name = location, None
                if Path(location).is_file():
                    where, weight_name = str(Path(location).parent), Path(location).name
                try:
                    pipeline.load_lora_weights(where, weight_name=weight_name, adapter_name=name)
                except (OSError, ValueError, RuntimeError, KeyError) as error:
                    raise UserError(
                        f"the LoRA {lora.path} does not load into {self.key[0]} "
                        f"({str(error).splitlines()[0][:200]})"
                    ) from None
                self.adapters[location] = name
            names.append(self.adapters[location])
        if not names:
            if self.adapters:
                pipeline.disable_lora()
            return
        pipeline.enable_lora()
        weights = [scale if scale is not None else lora.scale for lora in loras]
        pipeline.set_adapters(names, weights)


def _lora_location(path: str) -> str:
    """A LoRA folder, a .safetensors file (its folder), or a Hub id, as diffusers loads it."""
    candidate = Path(path).expanduser()
    if candidate.is_file():
        return str(candidate)
    if candidate.is_dir():
        if not (candidate / LORA_WEIGHTS).is_file():
            raise UserError(f"{candidate} holds no {LORA_WEIGHTS}")
        return str(candidate)
    if path.count("/") == 1 and not path.startswith((".", "/", "~")):
        return path  # a Hub id
    raise UserError(f"the LoRA {path} does not exist")


def _render(pipeline, request: PreviewRequest, on_first_step) -> np.ndarray:
    """One video, uint8 [F, H, W, 3], from the pipeline as it is configured now."""
    generator = torch.Generator("cpu").manual_seed(request.seed)
    seen = {"first": False}

    def callback(_pipe, _step, _timestep, kwargs):
        if not seen["first"]:
            seen["first"] = True
            on_first_step()
        return kwargs

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
        callback_on_step_end=callback,
        max_sequence_length=family.MAX_TEXT_TOKENS,
    ).frames[0]
    return (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)


def _label(frames: np.ndarray, text: str) -> np.ndarray:
    """Frames with a small caption in the top-left corner (Pillow's built-in font)."""
    from PIL import Image, ImageDraw

    labelled = []
    for frame in frames:
        image = Image.fromarray(frame)
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((2, 1), text)
        draw.rectangle((0, 0, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((2, 1), text, fill=(255, 255, 255))
        labelled.append(np.asarray(image))
    return np.stack(labelled)


def generate(
    request: PreviewRequest,
    cache: PipelineCache,
    out_path: str | Path,
    on_load=None,
    on_generate=None,
) -> PreviewResult:
    """Render a preview (or a side-by-side grid) to an mp4, with its settings beside it."""
    started = time.perf_counter()
    first_step: list[float] = []

    def mark_first_step():
        if not first_step:
            first_step.append(time.perf_counter() - started)

    pipeline = cache.get(request, on_load)
    if on_generate:
        on_generate()
    if request.compare_scales:
        panels = []
        for scale in [None, *request.compare_scales]:
            cache.use_loras([] if scale is None else request.loras, scale)
            label = "base" if scale is None else f"LoRA x{scale:g}"
            panels.append(_label(_render(pipeline, request, mark_first_step), label))
        video = np.concatenate(panels, axis=2)  # side by side: same frames, wider picture
    else:
        cache.use_loras(request.loras)
        video = _render(pipeline, request, mark_first_step)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    write_video(out_path, video, fps=request.fps)
    seconds = time.perf_counter() - started
    settings = {
        **request.model_dump(mode="json"),
        "seconds": round(seconds, 3),
        "first_step_seconds": round(first_step[0], 3) if first_step else None,
        "base_loads": cache.base_loads,
    }
    out_path.with_suffix(".json").write_text(json.dumps(settings, indent=2))
    return PreviewResult(out_path, seconds, first_step[0] if first_step else None, cache.base_loads)


# ---------------------------------------------------------------------------------------------
# The warm worker


class _Stop:
    def __init__(self):
        self.requested = False
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, *_):
        self.requested = True


def serve(worker_dir: str | Path, idle_timeout: float = 600.0, poll: float = 0.2) -> int:
    """Serve preview requests from worker_dir until idle for idle_timeout seconds."""
    worker_dir = Path(worker_dir)
    requests, done = worker_dir / REQUESTS_DIR, worker_dir / REQUESTS_DIR / "done"
    done.mkdir(parents=True, exist_ok=True)
    events = EventWriter(worker_dir)
    cache = PipelineCache()
    stop = _Stop()
    idle_since = time.monotonic()
    try:
        while not stop.requested:
            pending = sorted(requests.glob("*.json"), key=lambda p: p.stat().st_mtime)
            if not pending:
                if time.monotonic() - idle_since > idle_timeout:
                    break
                time.sleep(poll)
                continue
            _serve_one(pending[0], worker_dir, cache, events)
            pending[0].replace(done / pending[0].name)
            idle_since = time.monotonic()
    finally:
        events.close()
    return 0


def _serve_one(path: Path, worker_dir: Path, cache: PipelineCache, events: EventWriter) -> None:
    request_id = path.stem
    received = time.perf_counter()

    def emit(status: str, **fields) -> None:
        events.emit(
            PreviewEvent(
                request_id=request_id, status=status, base_loads=cache.base_loads, **fields
            )
        )

    emit("started")
    try:
        request = PreviewRequest.model_validate_json(path.read_text(encoding="utf-8"))
        out = worker_dir / OUTPUTS_DIR / f"{request_id}.mp4"
        result = generate(
            request,
            cache,
            out,
            on_load=lambda: emit("loading"),
            on_generate=lambda: emit("generating"),
        )
    except ValidationError as error:
        emit("failed", message=describe_validation_error(error).lstrip("-"))
    except UserError as error:
        emit("failed", message=str(error))
    except Exception as error:  # a broken request must not take the worker down
        emit("failed", message=f"{type(error).__name__}: {str(error).splitlines()[0][:300]}")
    else:
        emit(
            "done",
            files=[str(result.path.relative_to(worker_dir))],
            seconds=time.perf_counter() - received,
            first_step_seconds=result.first_step_seconds,
        )


# ---------------------------------------------------------------------------------------------
# The command line


def _lora_argument(text: str) -> LoraChoice:
    path, _, scale = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        return LoraChoice(path=path or text, scale=float(scale) if scale else 1.0)
    except ValueError:
        return LoraChoice(path=text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m core.infer")
    commands = parser.add_subparsers(dest="command", required=True)
    one = commands.add_parser("generate", help="render one preview")
    one.add_argument("--base", required=True)
    one.add_argument("--lora", action="append", default=[], metavar="PATH[:SCALE]")
    one.add_argument("--transformer")
    one.add_argument("--prompt", required=True)
    one.add_argument("--negative_prompt", default="")
    for name, default in (
        ("frames", 49),
        ("height", 480),
        ("width", 720),
        ("steps", 50),
        ("seed", 42),
    ):
        one.add_argument(f"--{name}", type=int, default=default)
    one.add_argument("--guidance", type=float, default=6.0)
    one.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    one.add_argument("--compare", default="", help="scales to show beside the base: 0.5,1.0")
    one.add_argument("--out", required=True)
    worker = commands.add_parser("serve", help="the warm preview worker")
    worker.add_argument("--dir", required=True)
    worker.add_argument("--idle-timeout", type=float, default=600.0)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.dir, args.idle_timeout)
    try:
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
            seed=args.seed,
            guidance=args.guidance,
            dtype=args.dtype,
            compare_scales=[float(v) for v in args.compare.split(",") if v.strip()],
        )
        result = generate(request, PipelineCache(), args.out)
    except ValidationError as error:
        print(f"error: {describe_validation_error(error).lstrip('-')}", file=sys.stderr)
        return EXIT_USER_ERROR
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(result.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
