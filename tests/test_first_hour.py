"""What a new user met in the first hour (issue 12), each as data: the page's handlers called
in-process, no browser, no training. The browser flow (tests/browser/test_flow.py) walks the
same hour end to end."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

from core.data.dataset import clean_caption
from core.data.importing import import_files, upload_paths
from core.data.synthetic import write_clip
from core.errors import UserError
from core.events import CheckpointEvent, ConfigEvent, EventWriter, StageEvent, StepEvent
from jobs.store import Job

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    from ui.studio import Studio

    return Studio(tmp_path_factory.mktemp("workspace"))


@pytest.fixture(scope="module")
def page(studio):
    """The whole page, built once: its tabs' handlers are called as the browser would."""
    from ui.dataset_tab import DatasetTab
    from ui.page import build_page
    from ui.preview_tab import PreviewTab
    from ui.publish_tab import PublishTab
    from ui.runs_tab import RunsTab
    from ui.train_tab import TrainTab

    built = {}
    originals = {}
    for cls in (TrainTab, DatasetTab, RunsTab, PreviewTab, PublishTab):  # keep each tab object
        originals[cls] = cls.__init__

        def keep(self, studio, _cls=cls):
            originals[_cls](self, studio)
            built[_cls.__name__] = self

        cls.__init__ = keep
    try:
        blocks = build_page(studio)
    finally:
        for cls, init in originals.items():
            cls.__init__ = init
    return {"blocks": blocks, **built}


def train_job(studio, name="run", status="running", reason=None, attempts=1) -> Job:
    job = studio.runner.store.add(name, "train", [])
    Path(job.job_dir).mkdir(parents=True)
    studio.runner.store.update(
        job.id, status=status, reason=reason, attempts=attempts, started=time.time()
    )
    return studio.runner.store.get(job.id)


# ---- 1. make run is online; the push says what works; the token stays -----------------------


def test_make_run_gives_the_app_no_hf_hub_offline(tmp_path):
    """The recipe `make run` runs, with `$(PY)` swapped for a command that prints the
    environment it gets (`sh -c env app.py ...` runs `env`)."""
    user_shell = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "MAKEFLAGS")}
    printed = subprocess.run(
        ["make", "-s", "-o", ".venv/.installed-run", "run", "PY=sh -c env"],
        cwd=REPO,
        env=user_shell,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "PATH=" in printed and "HF_HUB_OFFLINE" not in printed


def test_an_offline_push_names_what_to_do_and_starts_no_job(page, studio, monkeypatch):
    from huggingface_hub.errors import OfflineModeIsEnabled

    from core.hub import OFFLINE_SENTENCE, _explain

    sentence = _explain(OfflineModeIsEnabled("offline"), "https://hub", "creating", "a/b")
    assert sentence == OFFLINE_SENTENCE and "make run" in sentence and "\n" not in sentence
    publish = page["PublishTab"]
    finished = train_job(studio, "done", status="succeeded")
    (Path(finished.job_dir) / "train_config.json").write_text(
        json.dumps({"pretrained_model_name_or_path": "THUDM/CogVideoX-5b", "id_token": "SQR"})
    )
    (Path(finished.job_dir) / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = len(studio.runner.store.list())
    job, status, card, _ = publish.start_push(finished.id, "me/lora", True, "hf_typed")
    assert job is None and "HF_HUB_OFFLINE" in status and "Trigger word" in card
    assert len(studio.runner.store.list()) == before
    assert studio.hub_token() == "hf_typed"  # kept in memory for the retry


def test_a_hub_id_base_model_stays_a_hub_id_in_the_job(studio):
    """The runner makes paths absolute; a Hub id is no path (it became <cwd>/THUDM/...)."""
    from jobs.spec import JobSpec

    spec = JobSpec(train={"pretrained_model_name_or_path": "THUDM/CogVideoX-2b"})
    resolved = studio.runner.resolve_paths(spec).train
    assert resolved.pretrained_model_name_or_path == "THUDM/CogVideoX-2b"


def test_push_leaves_the_typed_token_in_the_page(page):
    """No event of the page writes the token field: what the user typed stays."""
    publish, blocks = page["PublishTab"], page["blocks"]
    writers = [fn for fn in blocks.fns.values() if publish.token in fn.outputs]
    assert writers == []


# ---- 2. a queued job says what it waits for ------------------------------------------------


def test_the_run_view_says_what_a_queued_run_waits_for(page, studio):
    runs = page["RunsTab"]
    job = train_job(studio, "waits", status="queued", reason="waiting for GPU 0: the run 'a'")
    header = runs._header(job, studio.follower(job).summary)
    assert "Waiting for GPU 0: the run &#x27;a&#x27;" in header
    table = runs._table([job])
    assert table.loc[0, "note"] == "waiting for GPU 0: the run 'a'" and table.loc[0, "id"] == job.id
    studio.runner.stop(job.id)  # cancelled: the other tests' heartbeats must not start it


# ---- 3. refused before a job exists, at the field ------------------------------------------


def test_start_refuses_an_empty_dataset_at_the_data_root_field(page, studio):
    train = page["TrainTab"]
    empty = studio.datasets_dir / "empty"
    empty.mkdir()
    values = train.form.values_of({"data_root": str(empty)})
    launch = ("auto", 1, 0, "", "")
    before = len(studio.runner.store.list())
    _, job, refusal = train.start_job("run", [], *launch, *values)
    assert job is None and refusal.field == "data_root" and "is empty" in refusal.sentence
    assert len(studio.runner.store.list()) == before
    marks = train.marks(None, refusal)
    widget = train.form.widgets["data_root"]
    assert marks[widget]["elem_classes"] == ["field-error"]
    assert marks[widget]["info"].startswith("⚠ the dataset in")
    assert any(isinstance(update, gr.Accordion) for update in marks.values())  # its fold opens
    # Fixed: the field gets its help line back.
    cleared = train.marks("data_root", None)
    assert cleared[widget]["elem_classes"] == [] and cleared[train.refused_field] is None


def test_a_bad_launch_setting_is_shown_at_its_widget(page):
    train = page["TrainTab"]
    values = train.form.values_of({})
    _, _, refusal = train.start_job("run", [], "auto", 2, 0, "", "", *values)
    assert refusal.field == "main_process_ip"
    assert train.marks(None, refusal)[train.main_ip]["elem_classes"] == ["field-error"]


# ---- 4. the dataset report names its buckets and what would fit ----------------------------


@pytest.fixture(scope="module")
def clips(studio) -> Path:
    folder = studio.datasets_dir / "clips"
    for index in range(2):
        write_clip(folder / f"c{index}.mp4", frames=13, height=64, width=96, seed=index)
        (folder / f"c{index}.txt").write_text(f"a square {index}\n")
    return folder


def test_the_report_names_the_buckets_and_offers_one_the_clips_fill(page, clips):
    dataset = page["DatasetTab"]
    message, summary, *_, suggestion = dataset._view(str(clips), "49x480x720")
    assert "49x480x720" in message and "Train tab" in message and "13x64x96" in message
    assert suggestion.visible and suggestion.value == "Use 13x64x96"
    message, summary, *_ = dataset._view(str(clips), "13x64x96")
    assert "2 samples will be trained on" in summary and "**13x64x96**" in summary


# ---- 5. uploads keep their folders; captions confirm; one trigger word ---------------------


def test_a_folder_upload_keeps_its_sub_folders_and_says_what_arrived(tmp_path):
    from ui.dataset_tab import describe_arrival

    source = tmp_path / "upload"
    for name in ("a.mp4", "a.txt", "b.mp4", "b.txt"):
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(b"x")
    files = sorted(source.iterdir())
    relative = [f"my clips/{'take 2/' if f.stem == 'b' else ''}{f.name}" for f in files]
    folder = import_files(files, tmp_path / "dataset", relative)
    assert (folder / "take 2" / "b.mp4").is_file() and (folder / "a.txt").is_file()
    assert describe_arrival(folder) == (
        "2 clips, 2 caption files, in 2 folders (top level, take 2/)"
    )
    # Hostile or stale paths never leave the folder: names alone, or plain components.
    assert upload_paths(files[:1], ["x/../../../etc/a.mp4"]) == [Path("etc/a.mp4")]
    assert upload_paths(files[:2], ["x/other.mp4", "x/a.txt"]) == [Path("a.mp4"), Path("a.txt")]


def test_captions_confirm_and_find_replace_edits_the_table_until_saved(page, studio):
    dataset = page["DatasetTab"]
    folder = studio.datasets_dir / "captions"
    write_clip(folder / "a.mp4", 9, 32, 32, seed=1)
    (folder / "a.txt").write_text("a red square")
    table = pd.DataFrame([["a.mp4", "a red square"]], columns=["file", "caption"])
    edited, note = dataset.replace_in_table(table, "red", "blue")
    assert edited.loc[0, "caption"] == "a blue square" and "Save captions" in note
    assert (folder / "a.txt").read_text() == "a red square"  # not written yet
    *_, confirmation = dataset.save_captions(str(folder), edited, "9x32x32")
    assert (
        "Saved 1 caption." in confirmation and (folder / "a.txt").read_text() == "a blue square\n"
    )
    *_, again = dataset.save_captions(str(folder), edited, "9x32x32")
    assert "Nothing to save" in again


def test_the_trigger_word_is_one_setting_and_never_doubled(page):
    dataset, train, blocks = page["DatasetTab"], page["TrainTab"], page["blocks"]
    id_token = train.form.widgets["id_token"]
    assert any(
        dataset.trigger in fn.inputs and id_token in fn.outputs for fn in blocks.fns.values()
    )
    assert any(
        id_token in fn.inputs and dataset.trigger in fn.outputs for fn in blocks.fns.values()
    )
    assert clean_caption("a  square", "SQR") == "SQR a square"
    assert clean_caption("SQR a square", "SQR") == "SQR a square"


def test_the_card_names_the_trigger_word_and_links_samples_the_app_serves(tmp_path):
    from core.hub import build_model_card
    from ui.publish_tab import served_by_this_app

    run = tmp_path / "run dir"
    (run / "validation" / "step-4").mkdir(parents=True)
    (run / "validation" / "step-4" / "a square.mp4").write_bytes(b"mp4")
    (run / "train_config.json").write_text(
        json.dumps({"pretrained_model_name_or_path": "THUDM/CogVideoX-5b", "id_token": "SQR"})
    )
    for_the_hub = build_model_card(run, "me/lora")
    assert "Trigger word: `SQR`" in for_the_hub
    assert "](validation/step-4/a square.mp4)" in for_the_hub
    in_the_app = build_model_card(run, "me/lora", sample_link=served_by_this_app)
    assert (
        f"](/gradio_api/file={run}/validation/step-4/a%20square.mp4)".replace(" ", "%20")
        in in_the_app
    )


# ---- 6. the Train tab ----------------------------------------------------------------------


def test_the_column_fields_show_only_for_layouts_that_have_columns(page, clips, studio):
    from core.data.synthetic import make_reference_dataset

    train = page["TrainTab"]
    pairs = train.layout_fields(str(clips), "auto", "prompt.txt", "videos.txt")
    assert [update["visible"] for update in pairs] == [False, False]
    reference = make_reference_dataset(studio.datasets_dir / "reference", count=1)
    listed = train.layout_fields(str(reference), "auto", "prompt.txt", "videos.txt")
    assert [update["visible"] for update in listed] == [True, True]


def test_floats_step_by_their_size_and_the_command_wraps_a_flag_a_line(page):
    from ui.train_tab import multiline_command

    train = page["TrainTab"]
    assert train.form.widgets["lr"].step == 1e-4
    command = multiline_command("accelerate launch --cpu -m core.train --lr 0.003 --id_token 'A B'")
    assert command.splitlines() == [
        "accelerate launch \\",
        "  --cpu \\",
        "  -m core.train \\",
        "  --lr 0.003 \\",
        "  --id_token 'A B'",
    ]


# ---- 7. the Runs tab -----------------------------------------------------------------------


def test_the_log_shows_the_current_attempt_only():
    from ui.runs_tab import current_attempt_log

    log = (
        "\n$ accelerate launch one\nstep 5\nCalledProcessError: ... 130\n$ accelerate launch two\n"
    )
    shown = current_attempt_log(log + "step 6\ndone", attempts=2)
    assert "CalledProcessError" not in shown and shown.endswith(
        "$ accelerate launch two\nstep 6\ndone"
    )
    assert shown.startswith("(attempt 2;")


def test_the_run_view_shows_the_latest_epoch_kept_checkpoints_and_both_start_times(page, studio):
    runs = page["RunsTab"]
    job = train_job(studio, "viewed", status="running", attempts=2)
    writer = EventWriter(job.job_dir)
    first = time.time() - 7200
    config = {"train steps": 40}
    writer.emit(ConfigEvent(time=first, training_configuration=config, config={}))
    writer.emit(StageEvent(stage="before training start", device="cpu", memory={"a": 1.0}))
    for epoch in range(1, 6):
        writer.emit(StageEvent(stage=f"after epoch {epoch}", device="cpu", memory={"a": epoch}))
    for step in (10, 20, 30):
        writer.emit(CheckpointEvent(step=step, path=f"checkpoint-{step}"))
        (Path(job.job_dir) / f"checkpoint-{step}").mkdir()
    (Path(job.job_dir) / "checkpoint-10").rmdir()  # the limit deleted it
    writer.emit(ConfigEvent(training_configuration=config, config={}, resumed_from_step=30))
    writer.emit(
        StepEvent(
            step=31,
            total_steps=40,
            epoch=6,
            loss=0.5,
            lr=1e-4,
            step_seconds=0.1,
            samples_per_second=10,
            eta_seconds=1.0,
        )
    )
    writer.close()
    view = runs._run_view(job)
    assert list(view["stages"]["stage"]) == ["before training start", "after epoch 5 (the latest)"]
    assert view["checkpoints"] == "Checkpoints: checkpoint-20, checkpoint-30"
    assert time.strftime("%H:%M", time.localtime(first)) in view["header"]
    assert "resumed" in view["header"]
    assert "no GPU memory to plot" in view["gpu_note"] and view["gpu_memory"] is None


def test_an_idle_tick_redraws_nothing_and_never_undoes_the_chosen_run(page, studio):
    runs = page["RunsTab"]
    older = train_job(studio, "older", status="succeeded")
    train_job(studio, "newer", status="succeeded")
    shown = runs.refresh(older.id, None)[-1]
    again = runs.refresh(older.id, shown)
    assert all(update == gr.skip() for update in again[:-1])
    # A job appeared while the user picked another run: the tick's dropdown update carries the
    # new choices but no value, so it cannot put back the run it was asked about.
    selector = runs.refresh(older.id, {**shown, "selected": "other choices"})[1]
    assert "choices" in selector.constructor_args and "value" not in selector.constructor_args


def test_duplicate_opens_the_train_tab_with_the_run_settings_under_a_new_name(page, studio):
    from jobs.spec import JobSpec

    blocks, train = page["blocks"], page["TrainTab"]
    job = train_job(studio, "original", status="succeeded")
    spec = JobSpec(name="original", train={"train_steps": 77, "data_root": "/data"})
    (Path(job.job_dir) / "spec.json").write_text(spec.model_dump_json())
    duplicate = next(fn for fn in blocks.fns.values() if fn.name == "duplicate")
    tabs, timer, name, *values = duplicate.fn(job.id)
    assert (
        tabs.constructor_args == {"selected": "train"} and timer.constructor_args["active"] is False
    )
    assert name == "original (copy)"
    assert values[train.form.fields.index("train_steps")] == 77


def test_every_timer_of_the_page_starts_off(page):
    assert not page["RunsTab"].timer.active
    assert not page["PreviewTab"].timer.active
    assert not page["PublishTab"].timer.active


# ---- 8. Preview starts from the run's own settings -----------------------------------------


def test_preview_takes_the_newest_finished_runs_validation_settings(page, studio):
    preview = page["PreviewTab"]
    job = train_job(studio, "previewed", status="succeeded")
    (Path(job.job_dir) / "train_config.json").write_text(
        json.dumps(
            {
                "pretrained_model_name_or_path": "/models/tiny",
                "video_resolution_buckets": ["9x32x32"],
                "validation_prompts": ["a square"],
                "validation_inference_steps": 4,
                "validation_height": 48,
            }
        )
    )
    run, *settings = preview.opened(None, "ignored", "", "49x480x720", "")
    assert run.value == job.id
    assert settings == ["/models/tiny", "a square", 9, 48, 32, 4]


def test_side_by_side_names_fit_small_panels_and_sit_above_them():
    import numpy as np

    from core.infer import _label
    from ui.preview_tab import panel_labels_html

    panel = _label(np.zeros((1, 32, 32, 3), np.uint8), "LoRA x0.75")[0]
    lit = np.nonzero((panel[..., 0] > 60).any(axis=0))[0]  # the caption's columns
    assert lit.size and lit.max() < 30  # it ends inside the 32-pixel panel, with its margin
    assert panel_labels_html(["base", "LoRA x0.75"]).count("<span>") == 2
    assert panel_labels_html(["LoRA"]) == ""


# ---- 9. the page comes back as the user left it --------------------------------------------


def test_the_form_and_preset_come_back_after_a_restart(page, studio):
    train = page["TrainTab"]
    values = train.form.values_of({"train_steps": 600})
    train.remember("0-cpu-demo", "my-lora", *values)
    restored = train.restored(studio.page_state())
    preset, info, name, *form = restored
    assert preset == "0-cpu-demo" and "CPU demo" in info and name == "my-lora"
    assert form[train.form.fields.index("train_steps")] == 600
    assert "hf_typed" not in json.dumps(studio.page_state())  # a typed token: memory only


def test_a_reopened_page_lands_on_a_run_under_way(page, studio):
    blocks, runs = page["blocks"], page["RunsTab"]
    restore = next(fn for fn in blocks.fns.values() if fn.name == "restore")
    from tests.job_folders import run_as_sleeper

    job = train_job(studio, "under way", status="running")
    sleeper = run_as_sleeper(studio.runner, job)
    try:
        outputs = restore.fn("9x32x32")
        tabs = outputs[
            [block._id for block in restore.outputs].index(
                next(b for b in restore.outputs if isinstance(b, gr.Tabs))._id
            )
        ]
        assert tabs.constructor_args == {"selected": "runs"}
        timer = outputs[-1]
        assert timer.constructor_args["active"] is True and timer.constructor_args["value"] == 1.0
        assert runs.timer in restore.outputs
    finally:
        sleeper.kill()
        studio.runner.store.update(job.id, status="stopped")


# ---- 12. an output_dir named in a spec (see tests/test_queue.py) ---------------------------


def test_a_tiny_model_that_failed_to_build_is_one_sentence(studio, tmp_path, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "executable", "/bin/false")
    target = tmp_path / "tiny"
    note = studio.ensure_tiny_model(target, "5b")
    assert "Building the tiny demo model" in note
    with pytest.raises(UserError, match="building the tiny demo model failed"):
        studio.wait_for_model(str(target))
