"""Train tab: a preset or your own settings, the GPUs to use, how accelerate launches the run
(one machine or several), the exact command, and Start."""

from __future__ import annotations

import contextlib
import html
import json
import shlex
import tempfile
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from core.errors import UserError
from jobs.checks import check_before_queue
from jobs.gpus import Gpu, list_gpus
from jobs.launch_choice import (
    AUTOMATIC,
    FAMILIES,
    FAMILY_TITLES,
    Recommendation,
    config_choices,
    config_path,
    model_kind,
    recommend,
)
from jobs.runner import JobError
from jobs.spec import JobSpec, make_spec
from jobs.store import Job
from ui.form import TrainForm, field_of_error, label
from ui.studio import Studio

LAUNCH_LABELS = {
    "config_file": "Accelerate config",
    "num_machines": "Machines",
    "machine_rank": "This machine's rank",
    "main_process_ip": "Main process address",
    "main_process_port": "Main process port",
}
LAUNCH_INFO = {
    "config_file": "--config_file. How accelerate spreads the run over the GPUs.",
    "num_machines": "--num_machines. Each runs the same number of GPUs.",
    "machine_rank": "--machine_rank. 0 is the main machine.",
    "main_process_ip": "--main_process_ip. The rank-0 machine, reachable from every machine.",
    "main_process_port": "--main_process_port. Blank: 29500.",
}


def _message(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{text}</div>' if text else ""


# The settings besides --data_root that decide how a dataset is read.
LAYOUT_FIELDS = ("dataset_layout", "caption_column", "video_column")


class Refusal(NamedTuple):
    """A setting that stops a run, and the sentence that says what to fix."""

    field: str | None  # a form field or launch setting; None when no one field is to blame
    sentence: str


class Outcome(NamedTuple):
    """What Start did: a message for under the button, the job it queued, or what refused it."""

    message: str
    job: Job | None
    refusal: Refusal | None = None


def multiline_command(command: str) -> str:
    """A long command with each flag on its own line (still one command to copy and paste)."""
    lines: list[list[str]] = [[]]
    for word in shlex.split(command):
        if (word.startswith("--") or word == "-m") and lines[-1]:
            lines.append([])
        lines[-1].append(word)
    return " \\\n  ".join(shlex.join(words) for words in lines)


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
        self._render_launch(gpus)
        with gr.Row():
            self.show = gr.Button("Show command", elem_id="show-command")
            self.save = gr.DownloadButton("Save config", elem_id="save-config")
            self.load = gr.UploadButton("Load config", file_types=[".json"], elem_id="load-config")
            self.start = gr.Button("Start training", variant="primary", elem_id="start")
        self.message = gr.HTML(elem_id="train-message")
        self.command = gr.Code(
            language="shell",
            label="Command",
            interactive=False,
            wrap_lines=True,
            visible=False,  # until Show command
            elem_id="command",
        )
        # The field that shows a refused value now, so the next check can give its help back.
        self.refused_field = gr.State(None)
        self.launch_widgets = dict(zip(LAUNCH_INFO, self.launch_inputs, strict=True))
        self.mark_outputs = [
            self.refused_field,
            *self.form.components,
            *self.launch_inputs,
            *self.form.fold_components,
        ]
        private = {"api_visibility": "private"}
        fields = self.form.components
        launch = self.launch_inputs
        widgets = self.form.widgets
        gr.on(
            [
                self.gpus.change,
                self.config.change,
                self.machines.change,
                widgets["training_type"].change,
                widgets["pretrained_model_name_or_path"].change,
            ],
            self.launch_advice,
            [
                self.gpus,
                self.config,
                self.machines,
                widgets["training_type"],
                widgets["pretrained_model_name_or_path"],
            ],
            [self.advice],
            show_progress="hidden",
            **private,
        )
        gr.on(
            [self.gpus.change, *[component.change for component in launch]],
            self.show_node_commands,
            [self.name, self.gpus, *launch, *fields],
            [self.node_commands],
            show_progress="hidden",
            **private,
        )
        widgets["pretrained_model_name_or_path"].change(
            self.image_settings,
            [widgets["pretrained_model_name_or_path"]],
            [widgets[name] for name in self.form.image_fields],
            show_progress="hidden",
            **private,
        )
        layout_inputs = [widgets[name] for name in ("data_root", *LAYOUT_FIELDS)]
        gr.on(
            [widgets["data_root"].change, widgets["dataset_layout"].change],
            self.layout_fields,
            layout_inputs,
            [widgets["video_column"], widgets["caption_column"]],
            show_progress="hidden",
            **private,
        )
        # .select, not .input: a dropdown that loses focus sends .input again, which re-applied
        # the preset over what the user had typed since. No spinner on every field it fills.
        self.preset.select(
            self.apply_preset,
            [self.preset],
            [self.preset_info, self.message, *fields],
            show_progress="hidden",
            **private,
        ).then(self.warm_for, [self.preset], None, show_progress="hidden", **private)
        self.show.click(
            self.show_command,
            [self.refused_field, self.name, self.gpus, *launch, *fields],
            [self.command, self.node_commands, self.message, *self.mark_outputs],
            **private,
        ).then(None, js=SCROLL_TO_REFUSED)
        self.save.click(
            self.save_config,
            [self.name, self.gpus, *launch, *fields],
            [self.save, self.message],
            **private,
        )
        self.load.upload(
            self.load_config, [self.load], [self.message, self.name, *launch, *fields], **private
        )
        # What the form shows is kept in the workspace: a refresh or an app restart brings it
        # back (`restored`), the preset's name with it.
        gr.on(
            [self.preset.change, self.name.change, *[field.change for field in fields]],
            self.remember,
            [self.preset, self.name, *fields],
            None,
            trigger_mode="always_last",
            show_progress="hidden",
            **private,
        )

    def remember(self, preset: str, name: str, *values) -> None:
        self.studio.remember_page_state(
            preset=preset or "", name=name, form=dict(zip(self.form.fields, values, strict=True))
        )

    def restored(self, state: dict) -> list:
        """Values of [preset, preset info, name, *form fields] as the page last showed them
        (skips for what the state does not hold)."""
        preset = self.studio.presets().get(state.get("preset") or "")
        form = state.get("form") if isinstance(state.get("form"), dict) else {}
        return [
            preset.key if preset else gr.skip(),
            self._preset_info(preset) if preset else gr.skip(),
            state.get("name") or gr.skip(),
            *[form[name] if name in form else gr.skip() for name in self.form.fields],
        ]

    def warm_for(self, key: str | None) -> None:
        """A preset that trains on the CPU (a demo's, or any on a machine without a GPU) has
        a trainer made ready before Start (jobs/standby.py). Asked once the form is filled:
        the standby's imports would otherwise slow the page's answer."""
        preset = self.studio.presets().get(key or "")
        if preset and (preset.needs_tiny_model or not list_gpus()):
            self.studio.warm_standby()

    @staticmethod
    def _preset_info(preset) -> str:
        return f"**{preset.title}.** {preset.description}\n\nGPU memory: {preset.gpu_memory}."

    def _render_launch(self, gpus: list[Gpu]) -> None:
        """The accelerate config (Automatic: recommended from the GPUs, model and training
        type) with the memory it needs, and the machines of a multi-machine run."""
        defaults = self.form.values_of({})
        model = defaults[self.form.fields.index("pretrained_model_name_or_path")]
        training_type = defaults[self.form.fields.index("training_type")]
        with gr.Accordion("Launch", open=True, elem_id="launch"):
            with gr.Row():
                self.config = gr.Dropdown(
                    label=LAUNCH_LABELS["config_file"],
                    choices=config_choices(),
                    value=AUTOMATIC,
                    info=LAUNCH_INFO["config_file"],
                    elem_id="accelerate-config",
                )
                self.advice = gr.Markdown(
                    self.launch_advice(
                        [gpus[0].index] if gpus else [], AUTOMATIC, 1, training_type, model
                    ),
                    elem_id="launch-advice",
                )
            with gr.Row():
                self.machines = gr.Number(
                    label=LAUNCH_LABELS["num_machines"],
                    value=1,
                    precision=0,
                    minimum=1,
                    info=LAUNCH_INFO["num_machines"],
                    elem_id="num-machines",
                )
                self.machine_rank = gr.Number(
                    label=LAUNCH_LABELS["machine_rank"],
                    value=0,
                    precision=0,
                    minimum=0,
                    info=LAUNCH_INFO["machine_rank"],
                    elem_id="machine-rank",
                )
                self.main_ip = gr.Textbox(
                    label=LAUNCH_LABELS["main_process_ip"],
                    placeholder="e.g. 10.0.0.1",
                    info=LAUNCH_INFO["main_process_ip"],
                    elem_id="main-process-ip",
                )
                self.main_port = gr.Textbox(
                    label=LAUNCH_LABELS["main_process_port"],
                    placeholder="29500",
                    info=LAUNCH_INFO["main_process_port"],
                    elem_id="main-process-port",
                )
            self.node_commands = gr.Code(
                language="shell",
                label="The command to run on each node",
                interactive=False,
                visible=False,
                elem_id="node-commands",
            )
        self.launch_inputs = [
            self.config,
            self.machines,
            self.machine_rank,
            self.main_ip,
            self.main_port,
        ]

    def wire_start(self, on_started, outputs: list) -> None:
        """Start submits the job; `on_started(job)` gives updates of `outputs` (the Runs tab's)
        that show the new job."""

        def start(refused, name, gpus, *values):
            outcome = self.start_job(name, gpus, *values)
            updates = {self.message: outcome.message, **self.marks(refused, outcome.refusal)}
            if outcome.job is not None:
                updates.update(on_started(outcome.job))
            return updates

        self.start.click(
            start,
            [self.refused_field, self.name, self.gpus, *self.launch_inputs, *self.form.components],
            [self.message, *self.mark_outputs, *outputs],
            trigger_mode="once",
            api_visibility="private",
        ).then(None, js=SCROLL_TO_REFUSED)

    def image_settings(self, model: str) -> list:
        """The image-to-video settings, shown for an image-to-video base only (and the learned
        positions' switch only for a base that has them)."""
        # A demo preset's tiny model may still be building: its configs say which it is (a
        # failed build is Start's to explain).
        with contextlib.suppress(UserError):
            self.studio.wait_for_model(model)
        kind = model_kind(model)
        shown = {
            name: kind.image_to_video
            and (name != "ignore_learned_positional_embeddings" or kind.learned_positions)
            for name in self.form.image_fields
        }
        return [gr.update(visible=shown[name]) for name in self.form.image_fields]

    def layout_fields(self, data_root: str, layout: str, caption_column: str, video_column: str):
        """The caption and video column fields, shown only where they apply: a dataset in the
        reference layout (its two list files) or a metadata file; not one of clips beside
        their .txt captions."""
        from core.data.discover import discover

        applies = True
        try:  # only a folder the page may read (the workspace, a --data-dir) is looked into
            root = self.studio.confinement.path(data_root, "Data root") if data_root else None
            if root is not None and root.is_dir():
                found = discover(root, layout or "auto", caption_column, video_column)
                applies = not (found.layout == "pairs" and found.samples)
        except (UserError, OSError, ValueError):
            applies = True  # not readable here: Start says why; keep the fields at hand
        return gr.update(visible=applies), gr.update(visible=applies)

    def marks(self, previous: str | None, refusal: Refusal | None) -> dict:
        """Updates that show a refusal at its field and give the last refused field its help
        line back."""
        field = refusal.field if refusal else None
        updates: dict = {self.refused_field: field}
        if previous and previous != field:
            if previous in self.form.widgets:
                updates.update(self.form.unmarked(previous))
            elif previous in self.launch_widgets:
                updates[self.launch_widgets[previous]] = gr.update(
                    info=LAUNCH_INFO[previous], elem_classes=[]
                )
        if refusal is None or field is None:
            return updates
        at_field = refusal.sentence.removeprefix(f"--{field}:").strip()
        if field in self.form.widgets:
            updates.update(self.form.marked(field, at_field))
        else:
            updates[self.launch_widgets[field]] = gr.update(
                info=f"⚠ {at_field}", elem_classes=["field-error"]
            )
        return updates

    # ---- handlers --------------------------------------------------------------------------

    def apply_preset(self, key: str):
        preset = self.studio.presets().get(key)
        if preset is None:  # "Custom settings": leave the form as it is
            return ("", "", *[gr.skip()] * len(self.form.fields))
        note = ""
        if preset.needs_tiny_model:
            # Built in the background: the form fills at once, and Start waits for the model.
            note = self.studio.ensure_tiny_model(
                Path(preset.train["pretrained_model_name_or_path"]), preset.needs_tiny_model
            )
        info = self._preset_info(preset)
        values = self.form.values_of(preset.train)
        # The dataset already chosen and the trigger word stay as they are.
        current = {name: gr.skip() for name in ("data_root", "id_token")}
        updates = [
            current.get(name, value) for name, value in zip(self.form.fields, values, strict=True)
        ]
        return info, _message(note), *updates

    # ---- launch ----------------------------------------------------------------------------

    def _recommend(
        self, gpus: list[int], machines, training_type: str, model: str
    ) -> tuple[Recommendation, list[Gpu], bool]:
        """The recommended config for these GPUs (sized by the smallest card) and this model."""
        kind = model_kind(model)
        chosen = [gpu for gpu in list_gpus() if gpu.index in gpus] if gpus else []
        # A tiny test model fits anywhere: size it as if memory were no object.
        memory = min(gpu.total_gb for gpu in chosen) if chosen and not kind.tiny else None
        machines = int(machines) if isinstance(machines, (int, float)) and machines >= 1 else 1
        if training_type not in ("lora", "full-finetune"):
            training_type = "lora"
        advice = recommend(len(gpus), memory, kind.family, training_type, machines)
        return advice, chosen, kind.tiny

    def launch_advice(
        self, gpus: list[int], choice: str, machines, training_type: str, model: str
    ) -> str:
        """The recommendation, its reason, and the memory a GPU needs against what is free."""
        gpus = list(gpus or [])
        advice, chosen, tiny = self._recommend(gpus, machines, training_type, model)
        automatic = not choice or choice == AUTOMATIC
        backend = advice.backend if automatic else choice
        if automatic:
            picked = f"`{advice.backend}`" if advice.backend else "no config file"
            lines = [f"**Automatic: {picked}.** {advice.reason}"]
        else:
            would = f"`{advice.backend}`" if advice.backend else "no config file"
            lines = [f"**You chose `{choice}`.** Automatic would pick {would}: {advice.reason}"]
        if not gpus:
            return "\n\n".join(lines)
        if tiny:
            return "\n\n".join([*lines, "A tiny test model: well under 1 GB a GPU."])
        needs = advice.needs(backend)
        if not needs:
            return "\n\n".join([*lines, "No memory figures for this config."])
        family = advice.family or "5b"
        mine, processes = needs[family], advice.processes
        peak = mine.peak_gb(processes)
        basis = mine.source()
        during = f", {peak:.0f} GB while validating" if mine.validation_gb else ""
        unknown = "" if advice.family else " The model is not one we know: sized as the 5B."
        lines.append(
            f"Needs about **{mine.training_gb(processes):.0f} GB a GPU** while training{during} "
            f"({FAMILY_TITLES[family]}, {processes} process{'es' if processes > 1 else ''}; "
            f"{basis}).{unknown}"
        )
        if mine.cpu_ram_gb:
            lines.append(f"Plus about {mine.cpu_ram_gb:.0f} GB of CPU RAM for the optimizer.")
        if chosen:
            lines.append(
                "Free now: "
                + " · ".join(
                    f"GPU {gpu.index} {gpu.free_gb:.1f} GB "
                    + ("✓" if gpu.free_gb >= peak else "⚠ not enough")
                    for gpu in chosen
                )
            )
        else:
            lines.append("Free memory of the chosen GPUs: unknown.")
        lines.append(
            f"Under `{backend}`: "
            + " · ".join(
                f"{FAMILY_TITLES[f]} {needs[f].peak_gb(processes):.0f} GB ({needs[f].basis})"
                for f in FAMILIES
            )
        )
        return "\n\n".join(lines)

    def _launch_settings(
        self, gpus: list[int], launch: tuple, config
    ) -> dict[str, str | int | float | None]:
        choice, machines, rank, address, port = launch
        if isinstance(machines, float) and machines.is_integer():
            machines = int(machines)
        if isinstance(rank, float) and rank.is_integer():
            rank = int(rank)
        if not choice or choice == AUTOMATIC:
            advice, _, _ = self._recommend(
                gpus, machines, config.training_type, config.pretrained_model_name_or_path
            )
            config_file = advice.config_file
        else:
            config_file = config_path(choice)
        return {
            "config_file": str(config_file) if config_file else None,
            "num_machines": machines,
            "machine_rank": rank,
            "main_process_ip": (address or "").strip() or None,
            "main_process_port": str(port).strip() if port not in (None, "") else None,
        }

    def _spec(self, name: str, gpus: list[int], launch: tuple, values: tuple) -> JobSpec:
        """The spec Start submits: the form's settings and the launch, or UserError."""
        config = self.form.config(list(values))
        gpus = list(gpus or [])
        return make_spec(
            name=name or "run",
            gpu_ids=gpus,
            train=config,
            launch=self._launch_settings(gpus, launch, config),
        )

    def _refusal(self, error: UserError) -> Refusal:
        field = field_of_error(error)
        known = field in self.form.widgets or field in LAUNCH_LABELS
        return Refusal(field if known else None, str(error))

    def _error(self, refusal: Refusal) -> str:
        """The message under the buttons (the field itself shows the sentence too)."""
        field = refusal.field
        where = ""
        if field in self.form.widgets:
            where = f"<b>{label(field)}</b>: "
        elif field in LAUNCH_LABELS:
            where = f"<b>{LAUNCH_LABELS[field]}</b>: "
        return _message(f"{where}{html.escape(refusal.sentence)}", "error")

    def _split_launch(self, values: tuple) -> tuple[tuple, tuple]:
        """Handler inputs after the name and GPUs: the launch widgets' values, then the form's."""
        count = len(self.launch_inputs)
        return values[:count], values[count:]

    def _node_commands(self, spec: JobSpec):
        commands = spec.node_commands()
        text = "\n\n".join(
            f"# machine rank {rank}\n{command}" for rank, command in enumerate(commands)
        )
        return gr.Code(value=text, visible=len(commands) > 1)

    def show_node_commands(self, name: str, gpus: list[int], *values):
        """The node commands, kept up to date while the machines are filled in."""
        launch, values = self._split_launch(values)
        machines = launch[1]
        if not isinstance(machines, (int, float)) or machines <= 1:
            return gr.Code(value="", visible=False)
        try:
            spec = self._spec(name, gpus, launch, values)
        except UserError as error:
            return gr.Code(value=f"# {error}", visible=True)
        return self._node_commands(spec)

    def show_command(self, refused: str | None, name: str, gpus: list[int], *values):
        """The exact command, one flag a line; a refused value is shown at its field."""
        launch, values = self._split_launch(values)
        try:
            spec = self._spec(name, gpus, launch, values)
        except UserError as error:
            refusal = self._refusal(error)
            updates = {self.command: "", self.message: self._error(refusal)}
            return {**updates, **self.marks(refused, refusal)}
        return {
            self.command: gr.Code(multiline_command(spec.show_command()), visible=True),
            self.node_commands: self._node_commands(spec),
            self.message: "",
            **self.marks(refused, None),
        }

    def save_config(self, name: str, gpus: list[int], *values):
        launch, values = self._split_launch(values)
        try:
            spec = self._spec(name, gpus, launch, values)
        except UserError as error:
            return gr.DownloadButton(), self._error(self._refusal(error))
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
                *[gr.skip()] * len(self.launch_inputs),
                *[gr.skip()] * len(self.form.fields),
            )
        return (
            _message("Loaded."),
            data.get("name", gr.skip()),
            *self._launch_values(data.get("launch")),
            *values,
        )

    def _launch_values(self, launch) -> list:
        """Launch widget values of a saved spec's "launch" part (a plain config has none)."""
        if not isinstance(launch, dict):
            return [gr.skip()] * len(self.launch_inputs)
        known = {value for _, value in config_choices()}
        stem = Path(launch["config_file"]).stem if launch.get("config_file") else AUTOMATIC
        port = launch.get("main_process_port")
        return [
            stem if stem in known else AUTOMATIC,
            launch.get("num_machines", 1),
            launch.get("machine_rank", 0),
            launch.get("main_process_ip") or "",
            "" if port is None else str(port),
        ]

    def start_job(self, name: str, gpus: list[int], *values) -> Outcome:
        """Validate, check what can be known before a model loads, refuse a double start, and
        submit."""
        launch, values = self._split_launch(values)
        try:
            spec = self._spec(name, gpus, launch, values)
            # The page reaches only the workspace and the --data-dir folders: checked first,
            # before anything reads the data or the model.
            self.studio.confinement.train_settings(spec.train)
            self.studio.wait_for_model(spec.train.pretrained_model_name_or_path)
            check_before_queue(spec, self.studio.runner)
        except UserError as error:
            refusal = self._refusal(error)
            return Outcome(self._error(refusal), None, refusal)
        # A second press (or a second tab) must not start the same run while it is on.
        earlier = self.studio.runner.find_duplicate(spec)
        if earlier is not None:
            return Outcome(
                _message(
                    f"This run is already {earlier.status} ({earlier.id}); it is not started "
                    "twice.",
                    "error",
                ),
                None,
            )
        try:
            job = self.studio.runner.submit(spec)
        except JobError as error:  # the job store cannot be written (a full disk)
            return Outcome(_message(html.escape(str(error)), "error"), None)
        if job.status == "queued":
            note = f"queued: {html.escape(job.reason or 'waiting for its GPUs')}"
        else:
            note = "started"
        return Outcome(_message(f"Run {html.escape(job.name)} {note}."), job)


# After a check, the page scrolls to the field that shows a refused value (if any).
SCROLL_TO_REFUSED = """() => {
  const field = document.querySelector('.field-error');
  if (field) field.scrollIntoView({block: 'center', behavior: 'smooth'});
}"""
