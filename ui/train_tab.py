"""Train tab: a preset or your own settings, the GPUs to use, how accelerate launches the run
(one machine or several), the exact command, and Start."""

from __future__ import annotations

import html
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import gradio as gr

from core.errors import UserError
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
from ui.form import TrainForm, field_of_error, label
from ui.studio import Studio

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCH_LABELS = {
    "config_file": "Accelerate config",
    "num_machines": "Machines",
    "machine_rank": "This machine's rank",
    "main_process_ip": "Main process address",
    "main_process_port": "Main process port",
}


def _message(text: str, kind: str = "info", lead: str = "") -> str:
    """`text` (escaped: it may hold names and paths a user typed) after `lead` markup."""
    return f'<div class="studio-{kind}">{lead}{html.escape(text)}</div>' if text else ""


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
            language="shell", label="Command", interactive=False, elem_id="command"
        )
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
            **private,
        )
        gr.on(
            [self.gpus.change, *[component.change for component in launch]],
            self.show_node_commands,
            [self.name, self.gpus, *launch, *fields],
            [self.node_commands],
            **private,
        )
        # .select, not .input: a dropdown that loses focus sends .input again, which re-applied
        # the preset over what the user had typed since.
        self.preset.select(
            self.apply_preset, [self.preset], [self.preset_info, self.message, *fields], **private
        )
        self.show.click(
            self.show_command,
            [self.name, self.gpus, *launch, *fields],
            [self.command, self.node_commands, self.message],
            **private,
        )
        self.save.click(
            self.save_config,
            [self.name, self.gpus, *launch, *fields],
            [self.save, self.message],
            **private,
        )
        self.load.upload(
            self.load_config, [self.load], [self.message, self.name, *launch, *fields], **private
        )

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
                    info="--config_file. How accelerate spreads the run over the GPUs.",
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
                    info="--num_machines. Each runs the same number of GPUs.",
                    elem_id="num-machines",
                )
                self.machine_rank = gr.Number(
                    label=LAUNCH_LABELS["machine_rank"],
                    value=0,
                    precision=0,
                    minimum=0,
                    info="--machine_rank. 0 is the main machine.",
                    elem_id="machine-rank",
                )
                self.main_ip = gr.Textbox(
                    label=LAUNCH_LABELS["main_process_ip"],
                    placeholder="e.g. 10.0.0.1",
                    info="--main_process_ip. The rank-0 machine, reachable from every machine.",
                    elem_id="main-process-ip",
                )
                self.main_port = gr.Textbox(
                    label=LAUNCH_LABELS["main_process_port"],
                    placeholder="29500",
                    info="--main_process_port. Blank: 29500.",
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

    def wire_start(self, on_started) -> None:
        """Start submits the job; `on_started` gives the Runs tab's outputs for the new job."""
        fields = self.form.components
        outputs, handler = on_started
        self.start.click(
            lambda *args: handler(self.start_job(*args)),
            [self.name, self.gpus, *self.launch_inputs, *fields],
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
        basis = (
            "measured in the reference guide"
            if mine.basis == "measured"
            else f"an estimate from parameter counts: {mine.how}"
        )
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

    def _error(self, error: UserError) -> str:
        field = field_of_error(error)
        if field in self.form.widgets:
            where = f"<b>{label(field)}</b>: "
        elif field in LAUNCH_LABELS:
            where = f"<b>{LAUNCH_LABELS[field]}</b>: "
        else:
            where = ""
        return _message(str(error), "error", lead=where)

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

    def show_command(self, name: str, gpus: list[int], *values):
        launch, values = self._split_launch(values)
        try:
            spec = self._spec(name, gpus, launch, values)
        except UserError as error:
            return "", gr.skip(), self._error(error)
        return spec.show_command(), self._node_commands(spec), ""

    def save_config(self, name: str, gpus: list[int], *values):
        launch, values = self._split_launch(values)
        try:
            spec = self._spec(name, gpus, launch, values)
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

    def start_job(self, name: str, gpus: list[int], *values):
        """Validate, refuse a double start, submit; returns (message, job or None)."""
        launch, values = self._split_launch(values)
        try:
            spec = self._spec(name, gpus, launch, values)
        except UserError as error:
            return self._error(error), None
        # A second press (or a second tab) must not start the same run while it is on.
        earlier = self.studio.runner.find_duplicate(spec)
        if earlier is not None:
            return _message(
                f"This run is already {earlier.status} ({earlier.id}); it is not started twice.",
                "error",
            ), None
        try:  # the page reaches only the workspace and the --data-dir folders
            self.studio.confinement.train_settings(spec.train)
        except UserError as error:
            return self._error(error), None
        try:
            job = self.studio.runner.submit(spec)
        except JobError as error:  # the job store cannot be written (a full disk)
            return _message(str(error), "error"), None
        note = "queued until its GPUs are free" if job.status == "queued" else "started"
        return _message(f"Run {job.name} {note}."), job
