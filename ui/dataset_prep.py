"""The Dataset tab's preparation controls: split long videos into scene clips, caption
automatically. Both start jobs (kinds `split` and `caption`) on the same runner and queue as
training; this module only builds their specs and shows their progress.

While a job of the chosen dataset runs, a 1 s timer follows it: the status line shows clips done
of clips to do with the rate and ETA, and the caption table is re-read so captions appear as the
model writes them (each marked as the model's until a person edits it). A split that finishes
opens its clips as the chosen dataset. Nothing here imports torch.
"""

from __future__ import annotations

import html
import shutil
import subprocess
import sys
from pathlib import Path

import gradio as gr

from core.data.autocaption import DEFAULT_MODEL, DEFAULT_PROMPT
from core.errors import UserError
from jobs.spec import JobSpec
from jobs.store import FINISHED
from ui.studio import Studio

TINY_CAPTIONER = "tiny test captioner (CPU demo: writes nonsense)"
CAPTION_MODELS = [DEFAULT_MODEL, "Qwen/Qwen2.5-VL-7B-Instruct", TINY_CAPTIONER]
FAMILIES = [("CogVideoX-5B (49 frames, 8 fps)", "5b"), ("CogVideoX-2B (49 frames, 8 fps)", "2b")]
FAMILIES.append(("CogVideoX1.5 (81 frames, 16 fps)", "1.5"))
CPU = "CPU"


def _status(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{text}</div>' if text else ""


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"


class DatasetPreparation:
    def __init__(self, studio: Studio, tab):
        self.studio = studio
        self.tab = tab  # the DatasetTab: its dataset choice, report view and caption table
        self.sources_dir = studio.workspace / "sources"

    def render(self) -> None:
        """The controls, where the tab places them; `wire` connects them once its view exists."""
        with gr.Accordion("Split long videos into scene clips", open=False, elem_id="split-box"):
            with gr.Row():
                self.long_videos = gr.File(
                    file_count="multiple",
                    file_types=["video"],
                    label="Long videos",
                    elem_id="upload-long-videos",
                    scale=2,
                )
                with gr.Column(scale=2):
                    self.server_videos = gr.Textbox(
                        label="or videos on this server, one path a line",
                        lines=2,
                        placeholder="/data/holiday.mp4",
                    )
                    self.split_name = gr.Textbox(
                        label="Name of the clip dataset",
                        placeholder="default: the first video's name + ' clips'",
                        elem_id="split-name",
                    )
            with gr.Row():
                self.family = gr.Dropdown(FAMILIES, value="5b", label="For", scale=2)
                self.frames = gr.Number(
                    0,
                    precision=0,
                    label="Frames a clip (0: longest the scene allows)",
                    scale=1,
                    elem_id="split-frames",
                )
                self.fps = gr.Number(0, label="Frame rate (0: the family's)", scale=1)
                self.size = gr.Textbox(label="Size HxW (empty: keep)", scale=1)
                self.crop = gr.Radio(["center", "none"], value="center", label="Crop", scale=1)
                self.min_seconds = gr.Number(1.0, label="Shortest scene (s)", scale=1)
                self.max_clips = gr.Number(
                    0,
                    precision=0,
                    label="Clips a scene (0: all that fit)",
                    scale=1,
                    elem_id="split-max-clips",
                )
            self.split = gr.Button("Split into clips", elem_id="split")
        with gr.Accordion("Caption automatically", open=False, elem_id="caption-box"):
            with gr.Row():
                self.model = gr.Dropdown(
                    CAPTION_MODELS,
                    value=DEFAULT_MODEL,
                    allow_custom_value=True,
                    label="Vision-language model (a Qwen2-VL, 2.5-VL or 3-VL folder or Hub id)",
                    elem_id="caption-model",
                    scale=3,
                )
                self.gpu = gr.Dropdown(
                    self._gpu_choices(), value=CPU, label="Run on", scale=1, elem_id="caption-gpu"
                )
                self.prefix = gr.Textbox(label="Put before every caption", scale=1)
            self.prompt = gr.Textbox(DEFAULT_PROMPT, lines=3, label="What to ask for each clip")
            with gr.Row():
                self.overwrite = gr.Checkbox(label="Also replace captions the model wrote")
                self.overwrite_person = gr.Checkbox(
                    label="Also replace captions a person wrote or edited"
                )
                self.caption = gr.Button("Caption automatically", elem_id="caption-auto")
        self.status = gr.HTML(elem_id="prep-status")
        self.following = gr.State(None)  # the job id the timer follows
        self.timer = gr.Timer(1.0, active=False)

    def wire(self) -> None:
        private = {"api_visibility": "private"}
        tab = self.tab
        self.split.click(
            self.start_split,
            [
                self.long_videos,
                self.server_videos,
                self.split_name,
                self.family,
                self.frames,
                self.fps,
                self.size,
                self.crop,
                self.min_seconds,
                self.max_clips,
            ],
            [self.status, self.following, self.timer],
            **private,
        )
        self.caption.click(
            self.start_caption,
            [
                tab.choice,
                self.model,
                self.prompt,
                self.prefix,
                self.overwrite,
                self.overwrite_person,
                self.gpu,
            ],
            [self.status, self.following, self.timer],
            **private,
        )
        self.timer.tick(
            self.follow,
            [self.following, tab.choice, tab.buckets_widget],
            [self.status, self.following, self.timer, tab.choice, *tab.view],
            show_progress="hidden",
            **private,
        )

    # ---- starting jobs ---------------------------------------------------------------------

    def _gpu_choices(self) -> list[str]:
        from jobs.gpus import list_gpus

        return [CPU, *[gpu.label for gpu in list_gpus()]]

    def _videos(self, uploaded, server_paths: str, folder: Path) -> list[Path]:
        """Uploads copied under the workspace (the upload's temp copy may go); server paths
        accepted only inside the folders this app may use (core/confine.py)."""
        videos = []
        for upload in uploaded or []:
            source = Path(getattr(upload, "name", upload))
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / Path(source.name).name
            same = target.is_file() and (
                (target.stat().st_size, target.stat().st_mtime)
                == (source.stat().st_size, source.stat().st_mtime)
            )
            if not same:  # a second press on the same upload reuses the copy a split may read
                shutil.copy2(source, target)
            videos.append(target)
        for line in (server_paths or "").splitlines():
            if not line.strip():
                continue
            path = self.studio.confinement.path(line.strip(), "Long videos")
            if not path.is_file():
                raise UserError(f"Long videos: {path} does not exist on the server")
            videos.append(path)
        if not videos:
            raise UserError("Upload a long video, or name one on the server, first.")
        return videos

    def start_split(
        self, uploaded, server_paths, name, family, frames, fps, size, crop, min_seconds, most
    ):
        from core.data.importing import safe_dataset_name

        first = Path(getattr(uploaded[0], "name", uploaded[0])) if uploaded else None
        first = first or Path((server_paths or "").strip().splitlines()[0] or "video")
        dataset = safe_dataset_name((name or "").strip() or f"{first.stem} clips")
        try:
            videos = self._videos(uploaded, server_paths, self.sources_dir / dataset)
            spec = JobSpec(
                name=f"split {dataset}",
                kind="split",
                split={
                    "inputs": [str(path) for path in videos],
                    "out": str(self.studio.datasets_dir / dataset),
                    "family": family,
                    "frames": int(frames) or None,
                    "fps": float(fps) or None,
                    "size": (size or "").strip() or None,
                    "crop": crop,
                    "min_seconds": float(min_seconds),
                    "max_clips_per_scene": int(most) or None,
                },
            )
        except (UserError, ValueError) as error:
            return _status(html.escape(_sentence(error)), "error"), gr.skip(), gr.skip()
        job = self.studio.runner.submit(spec)
        note = f"Splitting {len(videos)} video{'s' * (len(videos) != 1)} into <b>{dataset}</b>"
        return _status(f"{note}: {job.status}."), job.id, gr.Timer(active=True)

    def start_caption(self, folder, model, prompt, prefix, overwrite, overwrite_person, gpu):
        if not folder:
            return _status("Choose a dataset first.", "error"), gr.skip(), gr.skip()
        try:
            folder = str(self.studio.confinement.path(folder, "Dataset"))
            tiny = model == TINY_CAPTIONER
            model = self._tiny_captioner() if tiny else (model or "").strip()
            model = self.studio.confinement.model(model, "Vision-language model")
            gpu_ids = [] if gpu in (None, CPU) else [int(gpu.split(":")[0].removeprefix("GPU "))]
            spec = JobSpec(
                name=f"caption {Path(folder).name}",
                kind="caption",
                gpu_ids=gpu_ids,
                caption={
                    "folder": folder,
                    "model": model or None,
                    "prompt": (prompt or "").strip() or None,
                    "prefix": prefix or "",
                    "overwrite": bool(overwrite),
                    "overwrite_person": bool(overwrite_person),
                    # the tiny one writes nonsense: a short line of it shows the flow sooner
                    **({"max_new_tokens": 24} if tiny else {}),
                },
            )
        except (UserError, ValueError) as error:
            return _status(html.escape(_sentence(error)), "error"), gr.skip(), gr.skip()
        job = self.studio.runner.submit(spec)
        note = f"Captioning <b>{html.escape(Path(folder).name)}</b>: {job.status}"
        return (
            _status(f"{note}; captions appear in the table as they are written."),
            job.id,
            (gr.Timer(active=True)),
        )

    def _tiny_captioner(self) -> str:
        """The CPU demo's captioner, built on first use (never downloaded)."""
        target = self.studio.models_dir / "tiny-captioner"
        if not (target / "config.json").is_file():
            command = [sys.executable, "-m", "core.tiny", str(target), "--variant", "captioner"]
            result = subprocess.run(command, capture_output=True, text=True, timeout=600)
            if result.returncode:
                raise UserError(f"the tiny captioner could not be built: {result.stderr[-300:]}")
        return str(target)

    # ---- following them --------------------------------------------------------------------

    def follow(self, job_id: str | None, folder: str | None, buckets: str):
        tab = self.tab
        unchanged = (gr.skip(), *[gr.skip()] * len(tab.view))
        job = self.studio.runner.store.get(job_id) if job_id else None
        if job is None:
            return (gr.skip(), None, gr.Timer(active=False), *unchanged)
        self.studio.heartbeat()
        job = self.studio.runner.store.get(job.id)
        summary = self.studio.follower(job).summary
        text = self._progress_text(job, summary)
        finished = job.status in FINISHED
        timer = gr.Timer(active=not finished)
        kind = "error" if job.status in ("failed", "interrupted") else "info"
        status = _status(text, kind)
        following = None if finished else job.id
        spec = self.studio.runner.spec(job)
        if job.kind == "split" and finished and job.status == "succeeded":
            return (status, following, timer, *tab._chosen(Path(spec.split.out), buckets))
        if job.kind == "caption" and folder == spec.caption.folder:
            if finished:  # the whole report once: samples, skipped files, captions
                return (status, following, timer, gr.skip(), *tab._view(folder, buckets))
            # While it runs, only the caption table: the report probes every clip.
            from core.data.captions import read_captions

            view = [gr.skip()] * len(tab.view)
            view[tab.view.index(tab.captions)] = caption_rows(
                Path(folder), read_captions(Path(folder))
            )
            return (status, following, timer, gr.skip(), *view)
        return (status, following, timer, *unchanged)

    @staticmethod
    def _progress_text(job, summary) -> str:
        what = "Splitting" if job.kind == "split" else "Captioning"
        name = html.escape(job.name.split(" ", 1)[-1])
        if job.status in ("queued", "starting"):
            reason = f" ({html.escape(job.reason)})" if job.reason else ""
            return f"{what} <b>{name}</b>: {job.status}{reason}."
        if job.status == "succeeded":
            return f"{what} <b>{name}</b>: done, {job.last_step} clips."
        if job.status in FINISHED:
            reason = html.escape(job.reason or job.status)
            return f"{what} <b>{name}</b> {job.status}: {reason}. Resume it from the Runs tab."
        progress = summary.progress
        if progress is None:
            return f"{what} <b>{name}</b>: starting."
        phase, done, total = progress
        rate = ""
        if summary.preparation_rate:
            per_minute, eta = summary.preparation_rate
            rate = f", {per_minute:.1f} a minute, {_duration(eta)} left"
        return f"{what} <b>{name}</b>: {html.escape(phase)} {done} of {total}{rate}."


WRITTEN_BY = {"model": "model", "edited": "person (edited)", "person": "person"}


def caption_rows(root: Path, captions: dict[str, str]) -> list[list[str]]:
    """The caption table: file, caption, and who wrote it (the model's until a person edits)."""
    from core.data.caption_origin import CaptionRecord

    record = CaptionRecord(root)
    return [
        [name, text, WRITTEN_BY.get(record.origin(name, text) or "", "")]
        for name, text in captions.items()
    ]


def _sentence(error: Exception) -> str:
    """A pydantic error's first message, or the error's own sentence."""
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        return f"{where}: {first.get('msg', 'invalid value')}"
    return str(error)
