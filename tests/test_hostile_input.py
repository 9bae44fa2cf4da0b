"""Bad and hostile input, through the same code the page and the command lines call: each is
refused with one sentence naming what to fix, and touches nothing outside what the user opened.
"""

from __future__ import annotations

import html
import io
import json
import stat
import zipfile
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

from app import exposure_warnings
from core.confine import absolute_model_or_path
from core.data.archive import open_dataset_zip
from jobs.__main__ import main as jobs_main
from jobs.spec import JobSpec

TRAIN = {"pretrained_model_name_or_path": "/models/tiny", "data_root": "/data/clips"}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The page's tabs on a fresh workspace (rendered, not served)."""
    from ui.dataset_tab import DatasetTab
    from ui.preview_tab import PreviewTab
    from ui.studio import Studio
    from ui.train_tab import TrainTab

    studio = Studio(tmp_path_factory.mktemp("workspace"))
    train, dataset = TrainTab(studio), DatasetTab(studio)
    with gr.Blocks():
        train.render()
        widgets = train.form.widgets
        dataset.render(
            widgets["video_resolution_buckets"], widgets["data_root"], widgets["id_token"]
        )
    return studio, dataset, train, PreviewTab(studio)


def contents(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def error_text(markup: str) -> str:
    """The sentence an error message shows."""
    assert 'class="studio-error"' in markup, markup
    return html.unescape(markup.split(">", 1)[1].rsplit("<", 1)[0])


def zip_bytes(entries: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


# ---- uploads ---------------------------------------------------------------------------------


def test_a_zip_bomb_is_refused_as_an_upload_and_as_a_data_root_leaving_nothing(page, tmp_path):
    studio, dataset_tab, _, _ = page
    bomb = tmp_path / "bomb.zip"
    bomb.write_bytes(zip_bytes({"clips/a.txt": b"a caption", "clips/a.mp4": bytes(64 * 1024**2)}))
    assert bomb.stat().st_size < 256 * 1024
    before = contents(studio.datasets_dir)
    outputs = dataset_tab.import_upload(str(bomb), "bomb", "9x32x32")
    sentence = error_text(outputs[1])
    assert sentence == (
        "the zip entry 'clips/a.mp4' unpacks to more than 100 times its compressed size "
        "(a zip bomb); bomb.zip is refused"
    )
    assert contents(studio.datasets_dir) == before  # no dataset, no hidden leftovers
    cache = tmp_path / "cache"
    with pytest.raises(Exception, match="a zip bomb") as refused:
        open_dataset_zip(bomb, cache)
    assert type(refused.value).__name__ == "UnsafeArchive"
    assert contents(cache / "extracted") == []


@pytest.mark.parametrize(
    "upload, words",
    [
        ({"../escape.txt": b"x"}, "points outside the archive"),
        ({"/etc/cron.d/job": b"x"}, "has an absolute path"),
        ("link", "is a link"),
        (b"this is not a zip", "is not a readable zip"),
    ],
    ids=["dot-dot entry", "absolute entry", "link entry", "not a zip"],
)
def test_an_unsafe_or_broken_zip_upload_is_one_sentence_and_leaves_nothing(
    page, tmp_path, upload, words
):
    studio, dataset_tab, _, _ = page
    path = tmp_path / "upload.zip"
    if upload == "link":
        info = zipfile.ZipInfo("clips/passwd")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr(info, "/etc/passwd")
    elif isinstance(upload, dict):
        path.write_bytes(zip_bytes(upload))
    else:
        path.write_bytes(upload)
    before = contents(studio.datasets_dir)
    sentence = error_text(dataset_tab.import_upload(str(path), "unsafe", "9x32x32")[1])
    assert words in sentence and "\n" not in sentence
    assert contents(studio.datasets_dir) == before
    assert not (tmp_path / "escape.txt").exists()


def test_nothing_uploaded_and_a_taken_name_are_one_sentence(page, tmp_path):
    studio, dataset_tab, _, _ = page
    assert error_text(dataset_tab.import_upload([], "x", "9x32x32")[1]).startswith(
        "nothing was uploaded"
    )
    (studio.datasets_dir / "taken").mkdir()
    clip = tmp_path / "a.txt"
    clip.write_text("caption")
    assert "already exists; pick another name" in error_text(
        dataset_tab.import_upload([str(clip)], "taken", "9x32x32")[1]
    )


# ---- ways out of the workspace ---------------------------------------------------------------


@pytest.fixture
def outside(tmp_path) -> Path:
    """A dataset folder outside the workspace: a caption the page must never rewrite."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"not read")
    (folder / "a.txt").write_text("a private caption")
    return folder


def test_a_link_under_the_datasets_folder_is_not_listed_or_followed(page, outside):
    studio, dataset_tab, _, _ = page
    link = studio.datasets_dir / "looks-local"
    link.symlink_to(outside, target_is_directory=True)
    alias = studio.datasets_dir / "alias"
    (studio.datasets_dir / "real").mkdir(exist_ok=True)
    alias.symlink_to(studio.datasets_dir / "real", target_is_directory=True)
    try:
        listed = [path for _, path in dataset_tab.choices()]
        assert str(link) not in listed and str(alias) not in listed
        table = pd.DataFrame({"file": ["a.mp4"], "caption": ["TRIGGER a private caption"]})
        for folder in (link, alias):
            outputs = dataset_tab.save_captions(str(folder), table, "9x32x32")
            assert error_text(outputs[-1]) == (
                f"Dataset: {folder} is a link; the app does not follow links in "
                f"{studio.datasets_dir} (upload the data, or use --data-dir for a server folder)"
            )
            assert "is a link" in error_text(dataset_tab.show(str(folder), "9x32x32")[0])
            assert "is a link" in error_text(dataset_tab.use_folder(str(folder), "9x32x32")[1])
        assert (outside / "a.txt").read_text() == "a private caption"
    finally:
        link.unlink()
        alias.unlink()


def test_the_train_tab_takes_no_data_root_or_model_outside_the_workspace(page, outside):
    studio, _, train_tab, _ = page
    launch = ("auto", 1, 0, "", "")
    inside_link = studio.workspace / "escape"
    inside_link.symlink_to(outside, target_is_directory=True)
    linked = f"{inside_link} (a link to {outside})"
    try:
        for settings, setting, shown in [
            ({"data_root": str(outside)}, "--data_root", str(outside)),
            ({"data_root": str(inside_link)}, "--data_root", linked),
            (
                {"data_root": str(studio.datasets_dir), "pretrained_model_name_or_path": "/opt"},
                "--pretrained_model_name_or_path",
                "/opt",
            ),
        ]:
            values = train_tab.form.values_of(settings)
            message, job, refusal = train_tab.start_job("run", [], *launch, *values)
            assert job is None and refusal.field == setting.removeprefix("--")
            assert f"{setting}: {shown} is outside the folders this app may use" in (
                html.unescape(message)
            )
        assert not studio.runner.store.list()
    finally:
        inside_link.unlink()
    # A Hub id names no server path: it passes as it is, and stays one in the job.
    hub = train_tab.form.config(train_tab.form.values_of({"data_root": str(studio.workspace)}))
    studio.confinement.train_settings(hub)
    assert absolute_model_or_path("THUDM/CogVideoX-5b") == "THUDM/CogVideoX-5b"


def test_preview_takes_no_lora_or_base_model_outside_the_workspace(page, outside):
    studio, _, _, preview_tab = page
    for lora, base, setting in [
        (str(outside), "THUDM/CogVideoX-5b", "LoRA"),
        ("", str(outside), "Base model"),
    ]:
        ticket, message, *_ = preview_tab.start(
            None, lora, base, "a square", 0.75, 9, 32, 32, 2, 0, True, False, []
        )
        assert ticket is None
        assert f"{setting}: {outside} is outside the folders" in html.unescape(message)
    assert not studio.runner.store.list()


# ---- job specs and command-line flags --------------------------------------------------------


def spec_text(**changes) -> str:
    data = json.loads(JobSpec(name="bad", train=TRAIN).model_dump_json())
    for key, value in changes.items():
        section, _, name = key.partition("__")
        if name:
            data[section][name] = value
        else:
            data[section] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    "text, sentence",
    [
        ("{bad", "not valid JSON (key must be a string at line 1 column 2)"),
        ("[]", "a job spec must be a JSON object with name, kind, gpu_ids, launch, train"),
        (spec_text(fooo=1), "'fooo' is not part of a job spec, which holds name, kind, gpu_ids"),
        (spec_text(train__bogus=1), "--bogus is not a setting of the trainer"),
        (spec_text(train__lr=-1), "--lr: Input should be greater than 0 (got -1)"),
        (
            spec_text(train__video_resolution_buckets=["9x33x32"]),
            "--video_resolution_buckets: '9x33x32' has height 33, which must be a multiple of 16",
        ),
        (spec_text(launch__bogus=1), "--bogus is not a launch setting; they are num_processes"),
        (spec_text(launch__num_processes=0), "--num_processes: Input should be greater than"),
        (
            spec_text(launch__num_machines=2),
            "--main_process_ip: a run on several machines needs the address of the rank-0",
        ),
        (spec_text(gpu_ids=[0, 0]), "'gpu_ids' in the spec: GPU ids must be distinct"),
    ],
    ids=[
        "not json",
        "not an object",
        "unknown key",
        "unknown trainer setting",
        "bad value",
        "bad bucket",
        "unknown launch setting",
        "bad launch value",
        "machines without address",
        "repeated gpus",
    ],
)
def test_a_bad_spec_is_one_sentence_naming_what_to_fix(tmp_path, capsys, text, sentence):
    path = tmp_path / "spec.json"
    path.write_text(text)
    assert jobs_main(["--workspace", str(tmp_path / "ws"), "start", str(path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {path}: {sentence}"), error
    assert error.count("\n") == 1 and "Traceback" not in error
    assert not list((tmp_path / "ws").glob("runs/*"))


@pytest.mark.parametrize(
    "command, sentence",
    [
        (["start", "missing.json"], "missing.json does not exist"),
        (["start", "."], ". is a folder; give the spec's JSON file"),
        (["show", "nope"], "there is no job nope in"),
        (["stop", "nope"], "there is no job nope in"),
        (["resume", "nope"], "there is no job nope in"),
        (["--workspace", "spec.json", "list"], "--workspace: spec.json cannot be used"),
    ],
)
def test_bad_jobs_commands_are_one_sentence(tmp_path, capsys, monkeypatch, command, sentence):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "spec.json").write_text("{}")  # a file where a workspace folder is expected
    assert jobs_main(["--workspace", str(tmp_path / "ws"), *command]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: {sentence}") and error.count("\n") == 1, error


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--lr", "-1"], "--lr"),
        (["--train_steps", "many"], "--train_steps"),
        (["--config", "/nonexistent/spec.json"], "--config"),
    ],
)
def test_a_bad_trainer_flag_is_one_sentence_and_exit_2(capsys, argv, flag):
    from core.train import main as train_main

    assert train_main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and flag in error and error.count("\n") == 1, error


def test_sharing_without_a_password_is_warned_about():
    (warning,) = exposure_warnings("127.0.0.1", share=True, has_auth=False)
    assert warning.startswith("--share without --auth publishes this app on a public link")
    assert "add --auth USER:PASS" in warning
    assert len(exposure_warnings("0.0.0.0", share=True, has_auth=False)) == 2
    assert exposure_warnings("0.0.0.0", share=True, has_auth=True) == []
    assert exposure_warnings("127.0.0.1", share=False, has_auth=False) == []
