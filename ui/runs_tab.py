"""Runs tab: every job with its status, and one run's live view (loss, memory, log, videos).

Everything here is read from the job store and the job's folder. While the tab is open a timer
reads them, every second while a job is queued or running and every few seconds otherwise; the
events file is followed by byte offset, so each tick costs only what the trainer wrote since.
A tick sends the page only what changed: an idle page redraws nothing.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from core.events import stage_after_epoch
from core.models.source import DOWNLOAD_PHASE
from jobs.gpus import list_gpus
from jobs.runner import JobError, log_tail
from jobs.spec import PREPARATION_KINDS
from jobs.store import ACTIVE, Job
from ui.studio import Studio

# Jobs with a run view (Stop, Resume and the log): training, and dataset preparation.
RUN_VIEW_KINDS = ("train", *PREPARATION_KINDS)
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
TABLE_COLUMNS = ["run", "kind", "status", "progress", "ETA", "started", "note", "id"]
WATCHING_SECONDS = 1.0  # the timer while a job is queued or running
IDLE_SECONDS = 5.0  # the timer while nothing is: a job started elsewhere still shows up
LOG_LINES = 40
EPOCH_STAGE = stage_after_epoch(0).removesuffix("0")  # "after epoch "

# The log box shows its last lines when it opens (it keeps its scroll while the user reads).
SCROLL_LOG_TO_END = """() => {
  const log = document.querySelector('#log-tail textarea');
  if (log) log.scrollTop = log.scrollHeight;
}"""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _clock(moment: float | None) -> str:
    return time.strftime("%m-%d %H:%M", time.localtime(moment)) if moment else ""


def _job_label(job: Job) -> str:
    return f"{job.name} · {job.status} · {job.id}"


def _watching(jobs: list[Job]) -> bool:
    return any(job.status == "queued" or job.status in ACTIVE for job in jobs)


def timer_for(jobs: list[Job]) -> gr.Timer:
    """The Runs tab's timer: quick while something runs or waits, slow otherwise."""
    return gr.Timer(WATCHING_SECONDS if _watching(jobs) else IDLE_SECONDS, active=True)


def current_attempt_log(text: str, attempts: int) -> str:
    """The log's tail from the current attempt's command on: a resumed run does not show the
    stop of the attempt before it."""
    start = text.rfind("\n$ ")
    if start >= 0:
        text = text[start + 1 :]
    lines = text.splitlines()[-LOG_LINES:]
    if attempts > 1:
        lines.insert(0, f"(attempt {attempts}; the earlier attempts are above it in train.log)")
    return "\n".join(lines)


def stage_rows(stages: dict[str, dict[str, float]]) -> list[tuple[str, dict[str, float]]]:
    """The memory table's rows: the reference's stages, and the latest epoch's (one row, not
    one an epoch)."""
    rows: list[tuple[str, dict[str, float]]] = []
    epochs = [stage for stage in stages if stage.startswith(EPOCH_STAGE)]
    for stage, memory in stages.items():
        if not stage.startswith(EPOCH_STAGE):
            rows.append((stage, memory))
        elif stage == epochs[0]:
            latest = epochs[-1]
            rows.append((f"{latest} (the latest)" if len(epochs) > 1 else latest, stages[latest]))
    return rows


class RunsTab:
    def __init__(self, studio: Studio):
        self.studio = studio
        self._gpu_samples: dict[str, list[tuple[float, int, float]]] = {}

    def render(self) -> None:
        self.table = gr.Dataframe(
            headers=TABLE_COLUMNS,
            interactive=False,
            label="Jobs (click a run to see it)",
            elem_id="runs-table",
            max_height=260,
            wrap=True,
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
            with gr.Column():
                self.gpu_note = gr.Markdown(elem_id="gpu-note")
                self.gpu_memory = gr.LinePlot(
                    x="seconds",
                    y="GB used",
                    color="GPU",
                    title="GPU memory",
                    elem_id="gpu-memory",
                    height=220,
                )
        self.videos = gr.Gallery(
            label="Validation videos", columns=4, height=300, elem_id="validation-videos"
        )
        self.checkpoints = gr.Markdown(elem_id="checkpoints")
        self.log = gr.Textbox(
            label="train.log (the current attempt's last lines)",
            lines=12,
            max_lines=12,
            autoscroll=True,
            elem_id="log-tail",
        )
        self.timer = gr.Timer(WATCHING_SECONDS, active=False)
        # What each output of the view shows now: a tick sends only what differs.
        self.shown = gr.State(None)
        private = {"api_visibility": "private"}
        self.view = [
            self.table,
            self.selected,
            self.header,
            self.loss,
            self.lr,
            self.stages,
            self.gpu_note,
            self.gpu_memory,
            self.videos,
            self.checkpoints,
            self.log,
            self.shown,
        ]
        self.timer.tick(
            self.tick,
            [self.selected, self.shown],
            [*self.view, self.timer],
            show_progress="hidden",
            **private,
        )
        self.selected.input(
            self.refresh, [self.selected, gr.State(None)], self.view, **private
        ).then(None, js=SCROLL_LOG_TO_END)
        self.table.select(self.pick_row, None, self.view, **private).then(
            None, js=SCROLL_LOG_TO_END
        )
        self.stop.click(
            self.stop_run, [self.selected], [self.action_message], **private, trigger_mode="once"
        )
        self.resume.click(
            self.resume_run,
            [self.selected],
            [self.action_message, self.timer],
            **private,
            trigger_mode="once",
        )
        self.delete.click(
            self.delete_run,
            [self.selected, self.confirm],
            [self.action_message, self.confirm],
            **private,
        )

    # ---- the view --------------------------------------------------------------------------

    def opened(self, job_id: str | None, shown: dict | None):
        """The tab is open: the view, and its timer on."""
        jobs = self.studio.heartbeat()
        return (*self.refresh(job_id, shown, jobs), timer_for(jobs))

    def tick(self, job_id: str | None, shown: dict | None):
        jobs = self.studio.heartbeat()
        return (*self.refresh(job_id, shown, jobs), timer_for(jobs))

    def show_job(self, job: Job) -> dict:
        """Updates that show a job just started: the view drawn afresh, the timer on."""
        return dict(zip([*self.view, self.timer], self.opened(job.id, None), strict=True))

    def pick_row(self, evt: gr.SelectData):
        """A click on a row of the jobs table shows that run."""
        row = evt.row_value if isinstance(evt.row_value, list) else []
        job_id = str(row[-1]) if row else None
        job = self.studio.runner.store.get(job_id) if job_id else None
        if job is None or job.kind not in RUN_VIEW_KINDS:
            return [gr.skip()] * len(self.view)  # previews and pushes have no run view
        return self.refresh(job_id, None)

    def refresh(self, job_id: str | None, shown: dict | None, jobs: list[Job] | None = None):
        """Every output of the view; those that show what they showed already are skipped."""
        jobs = self.studio.heartbeat() if jobs is None else jobs
        train_jobs = [job for job in jobs if job.kind in RUN_VIEW_KINDS]
        if job_id is None or all(job.id != job_id for job in train_jobs):
            job_id = train_jobs[0].id if train_jobs else None
        job = next((j for j in train_jobs if j.id == job_id), None)
        values: dict[str, Any] = {
            "table": self._table(jobs),
            "selected": ([(_job_label(j), j.id) for j in train_jobs], job_id),
        }
        if job is None:
            values.update(
                header="<p>No runs yet: start one from the Train tab.</p>",
                loss=None,
                lr=None,
                stages=None,
                gpu_note="",
                gpu_memory=None,
                videos=[],
                checkpoints="",
                log="",
            )
        else:
            values.update(self._run_view(job))
        return (*self._changed(values, dict(shown or {})), self._remember(values))

    def _changed(self, values: dict[str, Any], shown: dict[str, str]) -> list:
        """The view's updates: a skip where the output already shows this value."""
        updates = []
        for name, value in values.items():
            if shown.get(name) == _fingerprint(value):
                updates.append(gr.skip())
            elif name == "selected":
                choices, chosen = value
                # The value only when it changes: a tick must not undo a run chosen meanwhile.
                previous = shown.get("selected_value")
                update = {"choices": choices}
                if previous != repr(chosen):
                    update["value"] = chosen
                updates.append(gr.Dropdown(**update))
            elif name == "gpu_memory":
                updates.append(
                    gr.LinePlot(value=value, visible=True)
                    if value is not None
                    else gr.LinePlot(value=None, visible=False)
                )
            else:
                updates.append(value)
        return updates

    @staticmethod
    def _remember(values: dict[str, Any]) -> dict[str, str]:
        remembered = {name: _fingerprint(value) for name, value in values.items()}
        remembered["selected_value"] = repr(values["selected"][1])
        return remembered

    def _table(self, jobs: list[Job]) -> pd.DataFrame:
        rows = []
        for job in jobs:
            progress = f"{job.last_step}/{job.total_steps}" if job.total_steps else ""
            eta = ""
            if job.status == "running" and job.kind == "train":
                eta = _duration(self.studio.follower(job).summary.eta_seconds)
            started = _clock(job.started)
            if job.kind == "train" and job.attempts > 1:
                first = self.studio.follower(job).summary.first_started
                if first and _clock(first) != started:
                    started = f"{_clock(first)} (resumed {_clock(job.started)})"
            note = job.reason or ""
            rows.append([job.name, job.kind, job.status, progress, eta, started, note, job.id])
        return pd.DataFrame(rows, columns=TABLE_COLUMNS)

    def _run_view(self, job: Job) -> dict[str, Any]:
        summary = self.studio.follower(job).summary
        job_dir = Path(job.job_dir)
        gpu_samples = self._gpu_plot(job)
        on_gpu = bool(job.gpu_ids) and bool(list_gpus())
        if on_gpu:
            gpu_note = ""
        elif job.gpu_ids:
            gpu_note = "No GPU is visible to this app: nothing to plot of GPU memory."
        else:
            gpu_note = "This run trains on the CPU: there is no GPU memory to plot."
        return {
            "header": self._header(job, summary),
            "loss": pd.DataFrame({"step": summary.loss.steps, "loss": summary.loss.values}),
            "lr": pd.DataFrame({"step": summary.lr.steps, "lr": summary.lr.values}),
            "stages": self._stages(summary.stages),
            "gpu_note": gpu_note,
            "gpu_memory": gpu_samples if on_gpu else None,
            "videos": self._videos(job_dir, summary.validations),
            "checkpoints": self._checkpoints(job_dir, summary.checkpoints),
            "log": current_attempt_log(log_tail(job_dir / "train.log", 8000), job.attempts),
        }

    @staticmethod
    def _header(job: Job, summary) -> str:
        colour = STATUS_COLOURS.get(job.status, "#6e7781")
        step, total, eta_seconds = summary.step, summary.total_steps, summary.eta_seconds
        unit = "step"
        if job.kind in PREPARATION_KINDS:  # clips done of clips to do, from the store
            step, total, unit = job.last_step, job.total_steps, "clip"
            eta_seconds = (summary.preparation_rate or (None, None))[1]
        progress = 0.0
        if total:
            progress = min(1.0, step / total)
        eta = f" · ETA {_duration(eta_seconds)}" if job.status == "running" else ""
        phase = ""
        if summary.progress and job.status == "running":
            phase = f" · {html.escape(_phase_text(*summary.progress))}"
        first = summary.first_started or job.started
        when = f" · started {_clock(first)}" if first else ""
        if job.attempts > 1 and job.started and _clock(job.started) != _clock(first):
            when += f", resumed {_clock(job.started)}"
        header = (
            f'<div class="run-header"><span class="status" style="background:{colour}">'
            f"{job.status}</span> <b>{html.escape(job.name)}</b> · {unit} {step}"
            f"/{total or '?'}{eta}{phase}"
            f'<span class="when">{when}</span>'
            f'<div class="bar"><div style="width:{progress * 100:.1f}%"></div></div>'
        )
        if job.status == "queued" and job.reason:
            header += f'<div class="studio-info">{html.escape(_sentence(job.reason))}.</div>'
        elif job.reason and job.status in ("failed", "interrupted", "stopped"):
            kind = "error" if job.status != "stopped" else "info"
            header += f'<div class="studio-{kind}">{html.escape(job.reason)}'
            if job.suggestion:
                header += f"<br><b>Try:</b> {html.escape(job.suggestion)}"
            header += "</div>"
        return header + "</div>"

    @staticmethod
    def _stages(stages: dict[str, dict[str, float]]) -> pd.DataFrame:
        columns = sorted({key for memory in stages.values() for key in memory})
        rows = [[stage, *[memory.get(c) for c in columns]] for stage, memory in stage_rows(stages)]
        return pd.DataFrame(rows, columns=["stage", *columns])

    @staticmethod
    def _videos(job_dir: Path, validations: dict[int, list[str]]) -> list[tuple[str, str]]:
        videos = []
        for step in sorted(validations, reverse=True):
            names = validations[step]
            for index, name in enumerate(names):
                path = job_dir / name
                if path.is_file():
                    # Short: the gallery's caption line is as wide as a tile.
                    videos.append(
                        (str(path), f"step {step}" + (f" · {index + 1}" * (len(names) > 1)))
                    )
        return videos

    @staticmethod
    def _checkpoints(job_dir: Path, named: list[str]) -> str:
        """The checkpoints still on disk (the limit deletes the oldest)."""
        kept = [name for name in named if (job_dir / name).is_dir()]
        return ("Checkpoints: " + ", ".join(kept)) if kept else ""

    def _gpu_plot(self, job: Job) -> pd.DataFrame:
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

    def resume_run(self, job_id: str | None):
        message = self._act(
            self.studio.runner.resume, job_id, "Resumed: it continues from its newest checkpoint."
        )
        return message, timer_for(self.studio.runner.store.list())

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


def _fingerprint(value: Any) -> str:
    """What an output shows, comparable between ticks (tables and plots by their data)."""
    if isinstance(value, pd.DataFrame):
        return value.to_json()
    return repr(value)


def _phase_text(name: str, done: int, total: int) -> str:
    """ "encoding clips 3/12"; a download in bytes reads "downloading base model 4.2/19.8 GB"."""
    if name == DOWNLOAD_PHASE:
        return f"{name} {done / 1024**3:.1f}/{total / 1024**3:.1f} GB ({done / max(total, 1):.0%})"
    return f"{name} {done}/{total}"


def _sentence(text: str) -> str:
    """A reason as a sentence: its first letter capitalised, the rest (GPU, names) as it is."""
    return text[:1].upper() + text[1:]
