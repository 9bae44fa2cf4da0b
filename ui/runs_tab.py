"""Runs tab: every job with its status, and one run's live view (loss, memory, log, videos).

Everything here is read from the job store and the job's folder on a 1 s timer; the events file
is followed by byte offset, so each tick costs only what the trainer wrote since the last one.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import gradio as gr
import pandas as pd

from core.models.source import DOWNLOAD_PHASE
from jobs.gpus import list_gpus
from jobs.runner import JobError, log_tail
from jobs.spec import PREPARATION_KINDS
from jobs.store import Job
from ui.studio import Studio

STATUS_COLOURS = {
    "succeeded": "#1a7f37",
    "failed": "#cf222e",
    "interrupted": "#cf222e",
    "running": "#0969da",
    "stopping": "#9a6700",
    "starting": "#0969da",
    "queued": "#6e7781",
    "stopped": "#6e7781",
}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _job_label(job: Job) -> str:
    return f"{job.name} · {job.status} · {job.id}"


class RunsTab:
    def __init__(self, studio: Studio):
        self.studio = studio
        self._gpu_samples: dict[str, list[tuple[float, int, float]]] = {}

    def render(self) -> None:
        self.table = gr.Dataframe(
            headers=["run", "kind", "status", "progress", "ETA", "started"],
            interactive=False,
            label="Jobs",
            elem_id="runs-table",
            max_height=260,
        )
        with gr.Row():
            self.selected = gr.Dropdown(
                label="Run", choices=[], elem_id="run-choice", allow_custom_value=True, scale=4
            )
            self.stop = gr.Button("Stop", elem_id="stop", scale=1)
            self.resume = gr.Button("Resume", elem_id="resume", scale=1)
            self.duplicate = gr.Button("Duplicate as new", elem_id="duplicate", scale=1)
            self.confirm = gr.Checkbox(label="Yes, delete it", scale=1, elem_id="confirm")
            self.delete = gr.Button("Delete", variant="stop", elem_id="delete", scale=1)
        self.action_message = gr.HTML(elem_id="run-action-message")
        self.header = gr.HTML(elem_id="run-header")
        with gr.Row():
            self.loss = gr.LinePlot(
                x="step", y="loss", title="Loss", elem_id="loss-plot", height=260
            )
            self.lr = gr.LinePlot(
                x="step", y="lr", title="Learning rate", elem_id="lr-plot", height=260
            )
        with gr.Row():
            self.stages = gr.Dataframe(
                label="Memory at the reference's stages (GB)",
                interactive=False,
                elem_id="stage-table",
            )
            self.gpu_memory = gr.LinePlot(
                x="seconds",
                y="GB used",
                color="GPU",
                title="GPU memory",
                elem_id="gpu-memory",
                height=220,
            )
        self.videos = gr.Gallery(
            label="Validation videos", columns=4, height=260, elem_id="validation-videos"
        )
        self.checkpoints = gr.Markdown(elem_id="checkpoints")
        self.log = gr.Textbox(
            label="train.log (last lines)",
            lines=10,
            max_lines=10,
            autoscroll=True,
            elem_id="log-tail",
        )
        self.timer = gr.Timer(1.0)
        private = {"api_visibility": "private"}
        self.view = [
            self.table,
            self.selected,
            self.header,
            self.loss,
            self.lr,
            self.stages,
            self.gpu_memory,
            self.videos,
            self.checkpoints,
            self.log,
        ]
        self.timer.tick(self.refresh, [self.selected], self.view, show_progress="hidden", **private)
        self.selected.input(self.refresh, [self.selected], self.view, **private)
        self.stop.click(
            self.stop_run, [self.selected], [self.action_message], **private, trigger_mode="once"
        )
        self.resume.click(
            self.resume_run, [self.selected], [self.action_message], **private, trigger_mode="once"
        )
        self.delete.click(
            self.delete_run,
            [self.selected, self.confirm],
            [self.action_message, self.confirm],
            **private,
        )

    # ---- the view --------------------------------------------------------------------------

    def refresh(self, job_id: str | None):
        jobs = self.studio.heartbeat()
        rows = []
        for job in jobs:
            progress = f"{job.last_step}/{job.total_steps}" if job.total_steps else ""
            eta = ""
            if job.status == "running" and job.kind == "train":
                eta = _duration(self.studio.follower(job).summary.eta_seconds)
            started = (
                time.strftime("%m-%d %H:%M", time.localtime(job.started)) if job.started else ""
            )
            rows.append([job.name, job.kind, job.status, progress, eta, started])
        table = pd.DataFrame(rows, columns=["run", "kind", "status", "progress", "ETA", "started"])
        train_jobs = [job for job in jobs if job.kind in ("train", *PREPARATION_KINDS)]
        if job_id is None or all(job.id != job_id for job in train_jobs):
            job_id = train_jobs[0].id if train_jobs else None
        choices = [(_job_label(job), job.id) for job in train_jobs]
        selector = gr.Dropdown(choices=choices, value=job_id)
        job = next((j for j in train_jobs if j.id == job_id), None)
        if job is None:
            return (
                table,
                selector,
                "<p>No runs yet: start one from the Train tab.</p>",
                *[None] * 4,
                [],
                "",
                "",
            )
        return (table, selector, *self._run_view(job))

    def _run_view(self, job: Job):
        summary = self.studio.follower(job).summary
        colour = STATUS_COLOURS.get(job.status, "#6e7781")
        if job.kind in PREPARATION_KINDS:  # clips done of clips to do, from the store
            summary.step, summary.total_steps = job.last_step, job.total_steps
        progress = 0.0
        if summary.total_steps:
            progress = min(1.0, summary.step / summary.total_steps)
        eta = f" · ETA {_duration(summary.eta_seconds)}" if job.status == "running" else ""
        phase = ""
        if summary.progress and job.status == "running":
            phase = f" · {html.escape(_phase_text(*summary.progress))}"
        header = (
            f'<div class="run-header"><span class="status" style="background:{colour}">'
            f"{job.status}</span> <b>{html.escape(job.name)}</b> · step {summary.step}"
            f"/{summary.total_steps or '?'}{eta}{phase}"
            f'<div class="bar"><div style="width:{progress * 100:.1f}%"></div></div>'
        )
        if job.reason and job.status in ("failed", "interrupted", "stopped"):
            kind = "error" if job.status != "stopped" else "info"
            header += f'<div class="studio-{kind}">{html.escape(job.reason)}'
            if job.suggestion:
                header += f"<br><b>Try:</b> {html.escape(job.suggestion)}"
            header += "</div>"
        header += "</div>"
        loss = pd.DataFrame({"step": summary.loss.steps, "loss": summary.loss.values})
        lr = pd.DataFrame({"step": summary.lr.steps, "lr": summary.lr.values})
        columns = sorted({key for memory in summary.stages.values() for key in memory})
        stages = pd.DataFrame(
            [
                [stage, *[memory.get(c) for c in columns]]
                for stage, memory in summary.stages.items()
            ],
            columns=["stage", *columns],
        )
        videos = []
        for step in sorted(summary.validations, reverse=True):
            for name in summary.validations[step]:
                path = Path(job.job_dir) / name
                if path.is_file():
                    videos.append((str(path), f"step {step}: {Path(name).stem}"))
        checkpoints = (
            ("Checkpoints: " + ", ".join(summary.checkpoints)) if summary.checkpoints else ""
        )
        log = "\n".join(log_tail(Path(job.job_dir) / "train.log", 6000).splitlines()[-40:])
        return (header, loss, lr, stages, self._gpu_plot(job), videos, checkpoints, log)

    def _gpu_plot(self, job: Job):
        """GPU memory of the run's GPUs, sampled by this page's timer while it runs."""
        samples = self._gpu_samples.setdefault(job.id, [])
        if job.status == "running" and job.gpu_ids:
            now = time.time()
            for gpu in list_gpus():
                if gpu.index in job.gpu_ids:
                    samples.append(
                        (now - (job.started or now), gpu.index, gpu.total_gb - gpu.free_gb)
                    )
        del samples[:-3600]
        return pd.DataFrame(samples, columns=["seconds", "GPU", "GB used"]).astype({"GPU": str})

    # ---- actions ---------------------------------------------------------------------------

    def _act(self, action, job_id: str | None, done: str) -> str:
        if not job_id:
            return '<div class="studio-error">Choose a run first.</div>'
        try:
            action(job_id)
        except JobError as error:
            return f'<div class="studio-error">{html.escape(str(error))}</div>'
        return f'<div class="studio-info">{done}</div>'

    def stop_run(self, job_id: str | None) -> str:
        job = self.studio.runner.store.get(job_id) if job_id else None
        if job is not None and job.status == "stopping":
            return '<div class="studio-info">Already stopping: it saves a checkpoint first.</div>'
        return self._act(
            self.studio.runner.stop,
            job_id,
            "Stopping: the run finishes its step and saves a checkpoint.",
        )

    def resume_run(self, job_id: str | None) -> str:
        return self._act(
            self.studio.runner.resume, job_id, "Resumed: it continues from its newest checkpoint."
        )

    def delete_run(self, job_id: str | None, confirmed: bool):
        if not confirmed:
            return (
                '<div class="studio-error">Tick "Yes, delete it" first: deleting removes '
                "the run's folder.</div>",
                False,
            )

        def delete(job):
            self.studio.runner.delete(job, confirm=True)
            self.studio.forget(job)

        return self._act(delete, job_id, "Deleted."), False


def _phase_text(name: str, done: int, total: int) -> str:
    """ "encoding clips 3/12"; a download in bytes reads "downloading base model 4.2/19.8 GB"."""
    if name == DOWNLOAD_PHASE:
        return f"{name} {done / 1024**3:.1f}/{total / 1024**3:.1f} GB ({done / max(total, 1):.0%})"
    return f"{name} {done}/{total}"
