"""The translation between the page and the trainer, tested as data (no browser, no training)."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr
import pytest

from core.config import TrainConfig, make_config
from core.confine import Confinement
from core.data.captions import read_captions, write_captions
from core.data.importing import import_files, link_server_folder, safe_name
from core.data.synthetic import make_reference_dataset, write_clip
from core.errors import UserError
from ui.form import APP_OWNED, TrainForm, field_of_error

PRESETS = sorted((Path(__file__).resolve().parents[1] / "assets" / "presets").glob("*.json"))


@pytest.fixture(scope="module")
def form():
    form = TrainForm()
    with gr.Blocks():
        form.render()
    return form


def test_every_trainer_setting_has_a_widget_except_those_the_app_decides(form):
    assert set(form.widgets) == set(TrainConfig.model_fields) - set(APP_OWNED)
    for name, widget in form.widgets.items():
        assert f"--{name}" in widget.info


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_each_preset_becomes_the_trainer_config_it_names(form, preset):
    data = json.loads(preset.read_text())
    assert data["gpu_memory"] and data["description"]
    config = form.config(form.values_of(data["train"]))
    # Validated as a whole (some settings need others: offloading needs checkpointing).
    assert config == make_config(data["train"])


def test_form_values_round_trip_through_the_config(form):
    original = make_config(
        {
            "validation_prompts": ["a cat", "a dog"],
            "seed": 7,
            "checkpointing_limit": 3,
            "video_resolution_buckets": ["49x480x720", "1x480x720"],
            "layerwise_upcasting_modules": ["transformer"],
        }
    )
    values = form.values_of(original.model_dump(mode="json"))
    assert form.config(values) == original


def test_a_bad_value_names_its_field(form):
    values = form.values_of({"lr": 1e-4})
    values[form.fields.index("lr")] = -1
    with pytest.raises(UserError) as raised:
        form.config(values)
    assert field_of_error(raised.value) == "lr"


def test_uploaded_names_cannot_escape_and_keep_their_unicode(tmp_path):
    assert safe_name("../../etc/passwd") == "passwd"
    assert safe_name("..\\evil.txt") == "evil.txt"
    assert safe_name("clip ünï 1.mp4") == "clip ünï 1.mp4"
    source = tmp_path / "upload"
    write_clip(source / "a b.mp4", 9, 32, 32, seed=1)
    (source / "a b.txt").write_text("caption")
    folder = import_files([source / "a b.mp4", source / "a b.txt"], tmp_path / "ds")
    assert sorted(p.name for p in folder.iterdir()) == ["a b.mp4", "a b.txt"]
    with pytest.raises(UserError, match="nothing was uploaded"):
        import_files([], tmp_path / "empty")
    with pytest.raises(UserError, match="outside the folders"):
        link_server_folder(str(tmp_path), Confinement([tmp_path / "ds"]))


def test_a_flattened_reference_upload_is_repointed(tmp_path):
    original = make_reference_dataset(tmp_path / "ref", count=2)
    files = [
        *sorted((original / "videos").iterdir()),
        original / "videos.txt",
        original / "prompt.txt",
    ]
    folder = import_files(files, tmp_path / "uploaded")
    assert (folder / "videos.txt").read_text().split() == ["00.mp4", "01.mp4"]
    assert len(read_captions(folder)) == 2


@pytest.mark.parametrize("layout", ["pairs", "reference", "metadata"])
def test_captions_edit_in_place_in_every_layout(layout, tmp_path):
    root = tmp_path / layout
    if layout == "reference":
        make_reference_dataset(root, count=2, captions=["one", "two"])
    else:
        write_clip(root / "a.mp4", 9, 32, 32, seed=1)
        write_clip(root / "b.mp4", 9, 32, 32, seed=2)
        if layout == "pairs":
            (root / "a.txt").write_text("one")
            (root / "b.txt").write_text("two")
        else:
            (root / "metadata.csv").write_text("file_name,caption\na.mp4,one\nb.mp4,two\n")
    first = sorted(read_captions(root))[0]
    assert write_captions(root, {first: "  an   edited caption "}) == 1
    assert read_captions(root)[first] == "an edited caption"
    every = {name: f"{text}, changed" for name, text in read_captions(root).items()}
    assert write_captions(root, every) == 2
    assert write_captions(root, every) == 0  # as they are already
    assert read_captions(root)[first] == "an edited caption, changed"
    assert not list(root.glob(".*.partial"))


@pytest.fixture(scope="module")
def train_tab(tmp_path_factory):
    from ui.studio import Studio
    from ui.train_tab import TrainTab

    tab = TrainTab(Studio(tmp_path_factory.mktemp("workspace")))
    with gr.Blocks():
        tab.render()
    return tab


def launch_values(config="auto", machines=1, rank=0, address="", port=""):
    return (config, machines, rank, address, port)


def test_start_submits_the_automatic_config_and_the_machines(train_tab):
    from jobs.launch_choice import config_path

    lora = train_tab.form.values_of({"pretrained_model_name_or_path": "THUDM/CogVideoX-5b"})
    on_cpu = train_tab._spec("run", [], launch_values(), lora)
    assert on_cpu.launch.config_file is None
    two_machines = launch_values(machines=2.0, rank=1.0, address=" 10.0.0.5 ", port="29555")
    spec = train_tab._spec("run", [0, 1], two_machines, lora)
    assert spec.launch.config_file == str(config_path("ddp"))
    assert (spec.launch.num_machines, spec.launch.machine_rank) == (2, 1)
    assert (spec.launch.main_process_ip, spec.launch.main_process_port) == ("10.0.0.5", 29555)
    chosen = train_tab._spec("run", [0, 1], launch_values("fsdp"), lora)
    assert chosen.launch.config_file == str(config_path("fsdp"))
    # The node commands of what Show command shows, one a machine.
    shown = train_tab.show_command(None, "run", [0, 1], *two_machines, *lora)
    nodes = shown[train_tab.node_commands]
    assert shown[train_tab.message] == "" and nodes.visible
    assert "--machine_rank 0" in nodes.value and "--machine_rank 1" in nodes.value
    command = shown[train_tab.command].value
    assert " ".join(command.replace("\\\n", " ").split()) in " ".join(nodes.value.split())
    hidden = train_tab.show_node_commands("run", [0, 1], *launch_values(), *lora)
    assert not hidden.visible


@pytest.mark.parametrize(
    "launch, words",
    [
        (launch_values(machines=2, rank=2, address="10.0.0.5"), "This machine's rank"),
        (launch_values(machines=2), "Main process address"),
        (launch_values(port="http"), "Main process port"),
        (launch_values("fsdp"), "does not run on the CPU"),
    ],
)
def test_a_bad_launch_setting_is_shown_in_the_message_area_and_nothing_starts(
    train_tab, launch, words
):
    values = train_tab.form.values_of({})
    message, job, refusal = train_tab.start_job("run", [], *launch, *values)
    assert job is None and 'class="studio-error"' in message and words in message
    assert refusal.field in ("config_file", *train_tab.launch_widgets)
    assert not train_tab.studio.runner.store.list()


def test_the_launch_advice_says_what_automatic_picks_and_what_it_needs(train_tab):
    advice = train_tab.launch_advice([0, 1], "auto", 1, "lora", "THUDM/CogVideoX-5b")
    assert "Automatic: `ddp`" in advice and "GB a GPU" in advice and "CogVideoX1.5-5B" in advice
    mine = train_tab.launch_advice([0], "fsdp", 1, "full-finetune", "THUDM/CogVideoX-2b")
    assert "You chose `fsdp`" in mine and "Automatic would pick `single_gpu`" in mine
    assert "no config file" in train_tab.launch_advice([], "auto", 1, "lora", "")


def test_a_saved_config_loads_back_with_its_launch(train_tab):
    values = train_tab.form.values_of({"pretrained_model_name_or_path": "THUDM/CogVideoX-5b"})
    launch = launch_values("deepspeed_zero3", 2, 1, "10.0.0.5", "29555")
    button, message = train_tab.save_config("saved", [0, 1], *launch, *values)
    assert message == ""
    saved = button.value
    loaded = train_tab.load_config(saved["path"] if isinstance(saved, dict) else saved)
    assert loaded[1] == "saved"
    assert list(loaded[2:7]) == ["deepspeed_zero3", 2, 1, "10.0.0.5", "29555"]


def test_the_gradio_stub_writer_that_app_py_skips_still_exists():
    """app.py saves about a second of start-up by turning Gradio's `.pyi` stub writer into a
    no-op; if a Gradio upgrade renames it, this fails rather than the start quietly slowing."""
    import inspect

    import gradio.component_meta as component_meta

    assert callable(getattr(component_meta, "create_or_modify_pyi", None))
    source = inspect.getsource(component_meta.ComponentMeta.__new__)
    assert "create_or_modify_pyi(" in source


def test_a_base_model_download_reads_in_gigabytes_in_the_run_header():
    from ui.runs_tab import _phase_text

    assert _phase_text("downloading base model", 4_509_715_660, 21_260_088_115) == (
        "downloading base model 4.2/19.8 GB (21%)"
    )
    assert _phase_text("encoding clips", 3, 12) == "encoding clips 3/12"
