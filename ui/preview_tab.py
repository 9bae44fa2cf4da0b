"""Preview tab: generate with a run's LoRA (or any LoRA folder or Hub id) beside its base model.

Generation happens in the warm preview worker (a job), never in the web process; the page keeps
only a ticket and polls for the result on its timer. The preview protocol and the worker's
client are imported by the handlers that use them: building the page needs neither.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import TYPE_CHECKING

import gradio as gr
from pydantic import ValidationError

from core.config import describe_validation_error
from core.errors import UserError
from ui.studio import Studio

if TYPE_CHECKING:
    from jobs.previews import Ticket


def _message(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{html.escape(text)}</div>' if text else ""


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
        with gr.Row():
            self.compare = gr.Checkbox(
                value=True, label="Side by side with the base model", elem_id="preview-compare"
            )
            self.busy_gpu = gr.Checkbox(value=False, label="Allow a GPU a training run uses")
            self.generate = gr.Button("Generate", variant="primary", elem_id="generate")
        self.status = gr.HTML(elem_id="preview-status")
        self.video = gr.Video(label="Preview", elem_id="preview-video", interactive=False)
        self.ticket = gr.State(None)
        self.timer = gr.Timer(1.0)
        private = {"api_visibility": "private"}
        self.run.input(
            self.pick_run,
            [self.run],
            [self.base, self.prompt, self.frames, self.height, self.width],
            **private,
        )
        self.generate.click(
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
            ],
            [self.ticket, self.status],
            **private,
            trigger_mode="once",
        )
        self.timer.tick(
            self.poll,
            [self.ticket],
            [self.ticket, self.status, self.video],
            show_progress="hidden",
            **private,
        )

    def run_choices(self) -> list[tuple[str, str]]:
        return [
            (f"{job.name} ({job.id})", job.id)
            for job in self.studio.runner.store.list()
            if job.kind == "train" and job.status == "succeeded"
        ]

    def pick_run(self, job_id: str):
        job = self.studio.runner.store.get(job_id) if job_id else None
        if job is None:
            return (gr.skip(),) * 5
        config = json.loads((Path(job.job_dir) / "train_config.json").read_text())
        frames, height, width = (int(v) for v in config["video_resolution_buckets"][0].split("x"))
        prompt = (config.get("validation_prompts") or [""])[0]
        return config["pretrained_model_name_or_path"], prompt, frames, height, width

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
    ):
        from core.preview_protocol import LoraChoice, PreviewRequest
        from jobs.previews import request_preview

        job = self.studio.runner.store.get(run_id) if run_id else None
        try:  # a local folder must be one the app may use; a Hub id is left as it is
            base = self.studio.confinement.model(base or "", "Base model")
            lora = self.studio.confinement.model(lora or "", "LoRA")
        except UserError as error:
            return None, _message(str(error), "error")
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
            )
        except ValidationError as error:
            return None, _message(describe_validation_error(error).lstrip("-"), "error")
        if not prompt.strip():
            return None, _message("Write a prompt first.", "error")
        ticket = request_preview(self.studio.runner, request, list(gpus or []), busy_gpu)
        return ticket, _message("Waiting for the preview worker...")

    def poll(self, ticket: Ticket | None):
        from jobs.previews import poll_preview

        if ticket is None:
            return None, gr.skip(), gr.skip()
        ticket, event = poll_preview(self.studio.runner, ticket)
        worker = self.studio.runner.store.get(ticket.worker_id)
        if event is None:
            state = worker.status if worker else "gone"
            waiting = "waiting for a free GPU" if state == "queued" else "generating"
            return ticket, _message(f"Preview {waiting}..."), gr.skip()
        if event.status == "failed":
            return None, _message(event.message or "The preview failed.", "error"), gr.skip()
        video = str(Path(worker.job_dir) / event.files[0]) if event.files else None
        seconds = f" in {event.seconds:.1f} s" if event.seconds else ""
        return None, _message(f"Done{seconds}."), video
