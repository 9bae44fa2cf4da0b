"""Train tab: a preset or your own settings, the GPUs to use, the exact command, and Start."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gradio as gr

from core.errors import UserError
from jobs.gpus import list_gpus
from jobs.spec import JobSpec
from jobs.store import ACTIVE
from ui.form import TrainForm, field_of_error, label
from ui.studio import Studio

REPO_ROOT = Path(__file__).resolve().parents[1]


def _message(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{text}</div>' if text else ""


class TrainTab:
    def __init__(self, studio: Studio):
        self.studio = studio
        self.form = TrainForm()

    def render(self) -> None:
        presets = self.studio.presets()
        with gr.Row():
            self.preset = gr.Dropdown(
                label="Preset",
                elem_id="preset",
                value="",
                choices=[("Custom settings", ""), *[(p.title, k) for k, p in presets.items()]],
            )
            self.name = gr.Textbox(label="Run name", value="my-lora", elem_id="run-name")
            gpus = list_gpus()
            self.gpus = gr.CheckboxGroup(
                label="GPUs",
                choices=[(g.label, g.index) for g in gpus],
                value=[gpus[0].index] if gpus else [],
                info=None if gpus else "No GPU found: training runs on the CPU.",
                elem_id="gpu-picker",
            )
        self.preset_info = gr.Markdown(elem_id="preset-info")
        self.form.render()
        with gr.Row():
            self.show = gr.Button("Show command", elem_id="show-command")
            self.save = gr.DownloadButton("Save config", elem_id="save-config")
            self.load = gr.UploadButton("Load config", file_types=[".json"], elem_id="load-config")
            self.start = gr.Button("Start training", variant="primary", elem_id="start")
        self.message = gr.HTML(elem_id="train-message")
        self.command = gr.Code(
            language="shell", label="Command", interactive=False, elem_id="command"
        )
        private = {"api_visibility": "private"}
        fields = self.form.components
        # .select, not .input: a dropdown that loses focus sends .input again, which re-applied
        # the preset over what the user had typed since.
        self.preset.select(
            self.apply_preset, [self.preset], [self.preset_info, self.message, *fields], **private
        )
        self.show.click(
            self.show_command,
            [self.name, self.gpus, *fields],
            [self.command, self.message],
            **private,
        )
        self.save.click(
            self.save_config, [self.name, self.gpus, *fields], [self.save, self.message], **private
        )
        self.load.upload(
            self.load_config, [self.load], [self.message, self.name, *fields], **private
        )

    def wire_start(self, on_started) -> None:
        """Start submits the job; `on_started` gives the Runs tab's outputs for the new job."""
        fields = self.form.components
        outputs, handler = on_started
        self.start.click(
            lambda *args: handler(self.start_job(*args)),
            [self.name, self.gpus, *fields],
            [self.message, *outputs],
            trigger_mode="once",
            api_visibility="private",
        )

    # ---- handlers --------------------------------------------------------------------------

    def apply_preset(self, key: str):
        preset = self.studio.presets().get(key)
        if preset is None:  # "Custom settings": leave the form as it is
            return ("", "", *[gr.skip()] * len(self.form.fields))
        note = ""
        if preset.needs_tiny_model:
            note = self._ensure_tiny_model(preset)
        info = f"**{preset.title}.** {preset.description}\n\nGPU memory: {preset.gpu_memory}."
        values = self.form.values_of(preset.train)
        # A dataset already chosen stays chosen.
        current = {name: gr.skip() for name in ("data_root", "id_token")}
        updates = [
            current.get(name, value) for name, value in zip(self.form.fields, values, strict=True)
        ]
        return info, _message(note), *updates

    def _ensure_tiny_model(self, preset) -> str:
        """The demo preset's tiny model is built here on first use (never downloaded)."""
        target = Path(preset.train["pretrained_model_name_or_path"])
        if (target / "model_index.json").is_file():
            return ""
        target.parent.mkdir(parents=True, exist_ok=True)
        # Built in a subprocess: the web process never imports torch.
        subprocess.run(
            [sys.executable, "-m", "core.tiny", str(target), "--variant", preset.needs_tiny_model],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
            timeout=300,
        )
        return f"Built the tiny demo model in {target}."

    def _spec(self, name: str, gpus: list[int], values: tuple) -> JobSpec:
        config = self.form.config(list(values))
        return JobSpec(name=name or "run", gpu_ids=list(gpus or []), train=config)

    def _error(self, error: UserError) -> str:
        field = field_of_error(error)
        where = f"<b>{label(field)}</b>: " if field in self.form.widgets else ""
        return _message(f"{where}{error}", "error")

    def show_command(self, name: str, gpus: list[int], *values):
        try:
            spec = self._spec(name, gpus, values)
        except UserError as error:
            return "", self._error(error)
        return spec.show_command(), ""

    def save_config(self, name: str, gpus: list[int], *values):
        try:
            spec = self._spec(name, gpus, values)
        except UserError as error:
            return gr.DownloadButton(), self._error(error)
        path = Path(tempfile.mkdtemp(prefix="config-")) / f"{spec.name}.json"
        path.write_text(spec.model_dump_json(indent=2))
        return gr.DownloadButton(value=str(path)), ""

    def load_config(self, file):
        try:
            data = json.loads(Path(getattr(file, "name", file)).read_text(encoding="utf-8"))
            train = data.get("train", data)
            values = self.form.values_of(train)
        except (OSError, ValueError, AttributeError) as error:
            return (
                _message(f"That file is not a saved config ({error}).", "error"),
                gr.skip(),
                *[gr.skip()] * len(self.form.fields),
            )
        return (_message("Loaded."), data.get("name", gr.skip()), *values)

    def start_job(self, name: str, gpus: list[int], *values):
        """Validate, refuse a double start, submit; returns (message, job or None)."""
        try:
            spec = self._spec(name, gpus, values)
        except UserError as error:
            return self._error(error), None
        # A second press (or a second tab) must not start the same run while it is on.
        waiting_or_running = self.studio.runner.store.list(("queued", *ACTIVE))
        mine = self.studio.runner.resolve_paths(spec).train.model_copy(update={"output_dir": ""})
        for job in waiting_or_running:
            if job.kind != "train" or job.name != spec.name:
                continue
            earlier = self.studio.runner.spec(job).train.model_copy(update={"output_dir": ""})
            if earlier == mine:
                return _message(
                    f"This run is already {job.status} ({job.id}); it is not started twice.",
                    "error",
                ), None
        job = self.studio.runner.submit(spec)
        note = "queued until its GPUs are free" if job.status == "queued" else "started"
        return _message(f"Run {job.name} {note}."), job
