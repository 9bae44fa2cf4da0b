"""Preview tab: generate with a run's LoRA (or any LoRA folder or Hub id) beside its base model.

Generation happens in the warm preview worker (a job), never in the web process; the page keeps
only a ticket and polls for the result on a timer that runs only while a preview is on its way.
The settings start from the newest finished run's validation settings (the shape it trained
and validated at), not from the full-size defaults. The preview protocol and the worker's
client are imported by the handlers that use them: building the page needs neither.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from pydantic import ValidationError

from core.config import describe_validation_error, parse_bucket
from core.data.video import IMAGE_SUFFIXES
from core.errors import UserError
from ui.studio import Studio

if TYPE_CHECKING:
    from jobs.previews import Ticket

POLL_SECONDS = 1.0
START_IMAGES = Path("previews") / "start-images"  # under the workspace: images previews start from
MAX_FIRST_FRAMES = 200  # clips offered as a start image
PHASES = {
    "started": "Generating… the worker took the request",
    "loading": "Generating… loading the base model (the first preview of a base loads it once)",
    "generating": "Generating…",
}


def _message(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{html.escape(text)}</div>' if text else ""


def run_settings(job_dir: Path) -> dict:
    """A finished run's preview settings: its base model, first validation prompt, and the
    shape and steps it validated with (the first bucket's shape when none were set)."""
    config = json.loads((job_dir / "train_config.json").read_text(encoding="utf-8"))
    frames, height, width = (int(v) for v in config["video_resolution_buckets"][0].split("x"))
    return {
        "base": config["pretrained_model_name_or_path"],
        "prompt": (config.get("validation_prompts") or [""])[0],
        "frames": config.get("validation_frames") or frames,
        "height": config.get("validation_height") or height,
        "width": config.get("validation_width") or width,
        "steps": config.get("validation_inference_steps") or 50,
    }


def panel_labels_html(labels: list[str]) -> str:
    """The side-by-side panels' names in a row above the video, as wide as the panels (the
    names drawn in the video get small when the video is)."""
    cells = "".join(f"<span>{html.escape(label)}</span>" for label in labels)
    return f'<div class="panel-labels">{cells}</div>' if len(labels) > 1 else ""


class PreviewTab:
    def __init__(self, studio: Studio):
        self.studio = studio

    def render(self, gpus_widget: gr.CheckboxGroup) -> None:
        with gr.Row():
            self.run = gr.Dropdown(
                label="Finished run", choices=[], elem_id="preview-run", allow_custom_value=True
            )
            self.lora = gr.Textbox(label="or a LoRA folder / Hub id", elem_id="preview-lora")
            self.base = gr.Textbox(label="Base model", elem_id="preview-base")
        self.prompt = gr.Textbox(label="Prompt", lines=2, elem_id="preview-prompt")
        with gr.Row():
            self.scale = gr.Slider(
                0.0, 1.5, value=0.75, step=0.05, label="LoRA scale", elem_id="preview-scale"
            )
            self.frames = gr.Number(value=49, precision=0, label="Frames (4k+1)")
            self.height = gr.Number(value=480, precision=0, label="Height")
            self.width = gr.Number(value=720, precision=0, label="Width")
            self.steps = gr.Number(value=50, precision=0, label="Steps")
            self.seed = gr.Number(value=42, precision=0, label="Seed")
        # Image-to-video bases start from an image: uploaded, or a clip's first frame.
        with gr.Row(visible=False, elem_id="preview-image-row") as self.image_row:
            self.image = gr.Image(
                type="filepath",
                sources=["upload"],
                label="Start image (image-to-video)",
                height=180,
                elem_id="preview-image",
            )
            self.first_frame = gr.Dropdown(
                label="or the first frame of a clip of the run's dataset",
                choices=[],
                elem_id="preview-first-frame",
            )
        # A run trained without the base's learned positional embeddings previews without them.
        self.ignore_learned = gr.State(False)
        with gr.Row():
            self.compare = gr.Checkbox(
                value=True, label="Side by side with the base model", elem_id="preview-compare"
            )
            self.busy_gpu = gr.Checkbox(value=False, label="Allow a GPU a training run uses")
            self.generate = gr.Button("Generate", variant="primary", elem_id="generate")
        self.status = gr.HTML(elem_id="preview-status")
        self.panels = gr.HTML(elem_id="preview-panels")
        self.video = gr.Video(label="Preview", elem_id="preview-video", interactive=False)
        self.ticket = gr.State(None)
        self.timer = gr.Timer(POLL_SECONDS, active=False)
        self.settings = [self.base, self.prompt, self.frames, self.height, self.width, self.steps]
        private = {"api_visibility": "private"}
        self.run.input(self.pick_run, [self.run], self.settings, **private)
        self.run.change(
            self.run_images, [self.run], [self.first_frame, self.ignore_learned], **private
        )
        self.base.change(
            self.image_visibility, [self.base], [self.image_row], show_progress="hidden", **private
        )
        self.first_frame.select(
            self.use_first_frame, [self.run, self.first_frame], [self.image, self.status], **private
        )
        # "Generating…" at once (no queue), then the request, which may first wait for the
        # demo model to finish building.
        self.generate.click(
            lambda: _message("Generating…"),
            None,
            [self.status],
            queue=False,
            show_progress="hidden",
            trigger_mode="once",
            **private,
        ).then(
            self.start,
            [
                self.run,
                self.lora,
                self.base,
                self.prompt,
                self.scale,
                self.frames,
                self.height,
                self.width,
                self.steps,
                self.seed,
                self.compare,
                self.busy_gpu,
                gpus_widget,
                self.image,
                self.ignore_learned,
            ],
            [self.ticket, self.status, self.panels, self.timer],
            **private,
        )
        self.timer.tick(
            self.poll,
            [self.ticket],
            [self.ticket, self.status, self.panels, self.video, self.timer],
            show_progress="hidden",
            **private,
        )

    def run_choices(self) -> list[tuple[str, str]]:
        return [
            (f"{job.name} ({job.id})", job.id)
            for job in self.studio.runner.store.list()
            if job.kind == "train" and job.status == "succeeded"
        ]

    def opened(self, current: str | None, model: str, prompts: str, buckets: str, base: str):
        """The tab is open: the finished runs, the newest one chosen (with its settings) unless
        one still is. With no finished run yet, the Train tab's base model, first validation
        prompt and first bucket: what the run would start from."""
        choices = self.run_choices()
        if current and any(value == current for _, value in choices):
            return (gr.Dropdown(choices=choices), *[gr.skip()] * len(self.settings))
        if choices:
            newest = choices[0][1]
            return (gr.Dropdown(choices=choices, value=newest), *self.pick_run(newest))
        if base and base.strip():  # typed in already: the user's, not ours to replace
            return (gr.Dropdown(choices=choices), *[gr.skip()] * len(self.settings))
        prompt = next((line.strip() for line in (prompts or "").splitlines() if line.strip()), "")
        shape = [gr.skip()] * 3  # unless the first bucket is one (the Train tab says if not)
        with contextlib.suppress(ValueError, IndexError):
            shape = list(parse_bucket((buckets or "").split()[0]))
        return (
            gr.Dropdown(choices=choices),
            model or gr.skip(),
            prompt or gr.skip(),
            *shape,
            gr.skip(),
        )

    def pick_run(self, job_id: str):
        job = self.studio.runner.store.get(job_id) if job_id else None
        if job is None:
            return (gr.skip(),) * len(self.settings)
        try:
            settings = run_settings(Path(job.job_dir))
        except (OSError, ValueError, KeyError):
            return (gr.skip(),) * len(self.settings)  # not finished after all: keep the form
        return tuple(
            settings[key] for key in ("base", "prompt", "frames", "height", "width", "steps")
        )

    def start(
        self,
        run_id,
        lora,
        base,
        prompt,
        scale,
        frames,
        height,
        width,
        steps,
        seed,
        compare,
        busy_gpu,
        gpus,
        image=None,
        ignore_learned=False,
    ):
        from core.preview_protocol import LoraChoice, PreviewRequest
        from jobs.previews import find_worker, request_preview

        job = self.studio.runner.store.get(run_id) if run_id else None
        idle = gr.Timer(active=False)
        try:  # a local folder must be one the app may use; a Hub id is left as it is
            base = self.studio.confinement.model(base or "", "Base model")
            lora = self.studio.confinement.model(lora or "", "LoRA")
        except UserError as error:
            return None, _message(str(error), "error"), "", idle
        loras = []
        if lora and lora.strip():
            loras = [LoraChoice(path=lora.strip(), scale=scale)]
        elif job is not None:
            loras = [LoraChoice(path=job.job_dir, scale=scale)]
        try:
            request = PreviewRequest(
                base=base,
                loras=loras,
                prompt=prompt,
                frames=int(frames),
                height=int(height),
                width=int(width),
                steps=int(steps),
                seed=int(seed),
                compare_scales=[scale] if compare and loras else [],
                image=self._kept_image(image),
                ignore_learned_positional_embeddings=bool(ignore_learned),
            )
        except (ValidationError, TypeError, ValueError) as error:
            text = (
                describe_validation_error(error).lstrip("-")
                if isinstance(error, ValidationError)
                else "Fill in the frames, height, width, steps and seed."
            )
            return None, _message(text, "error"), "", idle
        if not prompt.strip():
            return None, _message("Write a prompt first.", "error"), "", idle
        try:
            self.studio.wait_for_model(base)  # the demo preset's model may still be building
        except UserError as error:
            return None, _message(str(error), "error"), "", idle
        warm = find_worker(self.studio.runner, list(gpus or [])) is not None
        ticket = request_preview(self.studio.runner, request, list(gpus or []), busy_gpu)
        note = (
            "Generating…"
            if warm
            else "Generating… starting the preview worker (it loads torch and the base model "
            "first; later previews reuse them)"
        )
        return ticket, _message(note), "", gr.Timer(POLL_SECONDS, active=True)

    # ---- image-to-video -----------------------------------------------------------------------

    @staticmethod
    def image_visibility(base: str):
        """The start image, shown for an image-to-video base model only."""
        from jobs.launch_choice import model_kind

        return gr.update(visible=model_kind(base).image_to_video)

    def _run_config(self, job_id: str | None) -> dict | None:
        job = self.studio.runner.store.get(job_id) if job_id else None
        if job is None:
            return None
        try:
            return json.loads((Path(job.job_dir) / "train_config.json").read_text("utf-8"))
        except (OSError, ValueError):
            return None

    def run_images(self, job_id: str | None):
        """The run's clips whose first frame can start a preview, and whether the run dropped
        the base's learned positional embeddings (its previews must too)."""
        from core.data.discover import discover
        from core.data.video import is_image

        config = self._run_config(job_id)
        if config is None:
            return gr.Dropdown(choices=[], value=None), False
        clips = []
        root = Path(config.get("data_root") or "").expanduser()
        if root.is_dir():
            try:
                found = discover(
                    root,
                    config.get("dataset_layout", "auto"),
                    config.get("caption_column", "prompt.txt"),
                    config.get("video_column", "videos.txt"),
                )
            except (UserError, OSError, ValueError):
                found = None  # the dataset moved or changed: an upload still works
            if found is not None:
                clips = [
                    str(sample.path.resolve().relative_to(root.resolve()))
                    for sample in found.samples
                    if not is_image(sample.path)
                ][:MAX_FIRST_FRAMES]
        ignore = bool(config.get("ignore_learned_positional_embeddings"))
        return gr.Dropdown(choices=clips, value=None), ignore

    def use_first_frame(self, job_id: str | None, clip: str | None):
        """The chosen clip's first frame, saved in the workspace as the preview's start image."""
        from PIL import Image

        from core.data.video import UnreadableMedia, read_frames

        config = self._run_config(job_id)
        if config is None or not clip:
            return gr.skip(), ""
        root = Path(config.get("data_root") or "").expanduser().resolve()
        path = (root / clip).resolve()
        if not path.is_relative_to(root):  # only the run's own clips
            return gr.skip(), _message(f"{clip} is not a clip of the run's dataset", "error")
        try:
            frame = read_frames(path, [0])[0]
        except UnreadableMedia as error:
            return gr.skip(), _message(f"{clip} can't be read ({error})", "error")
        folder = self.studio.workspace / START_IMAGES
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{hashlib.blake2b(str(path).encode(), digest_size=8).hexdigest()}.png"
        Image.fromarray(frame).save(target)
        return str(target), ""

    def _kept_image(self, image: str | None) -> str | None:
        """The start image as a file in the workspace: an upload (in Gradio's temporary
        folder) is copied there, so the preview worker reads a file the app keeps."""
        if not image:
            return None
        source = Path(image)
        folder = (self.studio.workspace / START_IMAGES).resolve()
        if source.resolve().parent == folder:
            return str(source)
        digest = hashlib.blake2b(source.read_bytes(), digest_size=8).hexdigest()
        folder.mkdir(parents=True, exist_ok=True)
        suffix = source.suffix.lower() if source.suffix.lower() in IMAGE_SUFFIXES else ".png"
        target = folder / f"{digest}{suffix}"
        shutil.copyfile(source, target)
        return str(target)

    def poll(self, ticket: Ticket | None):
        from jobs.previews import poll_preview

        idle = gr.Timer(active=False)
        if ticket is None:
            return None, gr.skip(), gr.skip(), gr.skip(), idle
        ticket, event = poll_preview(self.studio.runner, ticket)
        worker = self.studio.runner.store.get(ticket.worker_id)
        if event is None or event.status in PHASES:
            if worker is not None and worker.status == "queued":
                why = worker.reason or "waiting for a free GPU"
                text = (
                    f"{why[:1].upper()}{why[1:]}. Tick “Allow a GPU a training run uses” to "
                    "preview beside it."
                )
            elif event is not None:
                text = PHASES[event.status]
            else:
                text = "Generating… the preview worker is starting"
            return ticket, _message(text), gr.skip(), gr.skip(), gr.skip()
        if event.status == "failed":
            message = _message(event.message or "The preview failed.", "error")
            return None, message, "", gr.skip(), idle
        folder = Path(worker.job_dir)
        video = next((str(folder / f) for f in event.files if f.endswith(".mp4")), None)
        labels = []
        for name in event.files:
            if name.endswith(".json"):
                try:
                    labels = json.loads((folder / name).read_text(encoding="utf-8"))["panels"]
                except (OSError, ValueError, KeyError):
                    labels = []
        seconds = f" in {event.seconds:.1f} s" if event.seconds else ""
        return None, _message(f"Done{seconds}."), panel_labels_html(labels), video, idle
