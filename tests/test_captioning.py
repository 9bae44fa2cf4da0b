"""Automatic captions with the tiny captioner: a person's captions survive, a stop resumes.

The captioner runs in this process (torch and transformers are loaded by the suite anyway); a
caption of 12 new tokens on 4 frames of a 32x32 clip takes a fraction of a second.
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from core.config import make_config
from core.data.__main__ import main as data_main
from core.data.caption_origin import EDITED, MODEL, PERSON, CaptionRecord
from core.data.report import build_report
from core.data.synthetic import write_clip
from core.events import read_events

PERSON_CAPTION = "a person wrote this one"


@pytest.fixture
def five_clips(tmp_path) -> Path:
    folder = tmp_path / "clips"
    for index in range(5):
        write_clip(folder / f"clip {index}.mp4", frames=9, height=32, width=32, seed=index)
    (folder / "clip 0.txt").write_text(PERSON_CAPTION + "\n", encoding="utf-8")
    return folder


def caption(folder: Path, model: Path, events: Path, *flags: str) -> int:
    argv = ["caption", str(folder), "--model", str(model), "--events", str(events)]
    return data_main([*argv, "--frames", "4", "--max-new-tokens", "12", *flags])


def captions(folder: Path) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8").strip() for p in sorted(folder.glob("*.txt"))}


def test_a_person_s_captions_survive_overwrite_and_a_stop_resumes(
    five_clips, tiny_captioner, tmp_path, monkeypatch
):
    events = tmp_path / "events.jsonl"
    # 1. Stopped by SIGINT after two clips, as the job runner stops a job.
    from core.data import preparation

    written = []
    item = preparation.Reporter.item

    def item_then_stop(self, file, status, reason=None):
        item(self, file, status, reason)
        if status == "written":
            written.append(file)
            if len(written) == 2:
                signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(preparation.Reporter, "item", item_then_stop)
    assert caption(five_clips, tiny_captioner, events, "--prefix", "SQR") == 128 + signal.SIGINT
    assert len(captions(five_clips)) == 1 + 2
    assert read_events(events)[-1].kind == "stopped"
    monkeypatch.undo()
    # 2. The same command again finishes the rest, and only the rest.
    assert caption(five_clips, tiny_captioner, events, "--prefix", "SQR") == 0
    first = captions(five_clips)
    assert first["clip 0"] == PERSON_CAPTION
    assert all(first[f"clip {i}"].startswith("SQR ") for i in range(1, 5))
    record = CaptionRecord(five_clips)
    assert all(len(record._by_file[f"clip {i}.mp4"]) == 1 for i in range(1, 5))
    every = read_events(events)
    progress = [e for e in every if e.kind == "progress" and e.phase == "captioning clips"]
    assert progress[-1].done == progress[-1].total == 4 and progress[-1].per_minute
    assert [e.kind for e in every].count("done") == 1
    # 3. A person edits one; --overwrite with other settings rewrites only the model's three.
    (five_clips / "clip 2.txt").write_text("SQR edited by hand\n", encoding="utf-8")
    assert caption(five_clips, tiny_captioner, events, "--overwrite", "--prefix", "NEW") == 0
    second = captions(five_clips)
    assert second["clip 0"] == PERSON_CAPTION and second["clip 2"] == "SQR edited by hand"
    assert [second[f"clip {i}"].startswith("NEW ") for i in (1, 3, 4)] == [True] * 3
    kept = [e for e in read_events(events)[len(every) :] if e.kind == "item"]
    assert {e.file: e.status for e in kept} == {
        "clip 0.mp4": "skipped",
        "clip 2.mp4": "skipped",
        "clip 1.mp4": "written",
        "clip 3.mp4": "written",
        "clip 4.mp4": "written",
    }
    # 4. The report names each caption's author.
    config = make_config({"data_root": str(five_clips), "video_resolution_buckets": ["5x32x32"]})
    origin = {row.file: row.caption_by for row in build_report(config).samples}
    assert origin == {
        "clip 0.mp4": PERSON,
        "clip 1.mp4": MODEL,
        "clip 2.mp4": EDITED,
        "clip 3.mp4": MODEL,
        "clip 4.mp4": MODEL,
    }
    # 5. Only when the person says so are their captions replaced.
    assert caption(five_clips, tiny_captioner, events, "--overwrite-person", "--prefix", "NEW") == 0
    third = captions(five_clips)
    assert third["clip 0"].startswith("NEW ") and third["clip 2"].startswith("NEW ")
    assert all(third[f"clip {i}"] == second[f"clip {i}"] for i in (1, 3, 4))


def test_an_unreadable_clip_is_skipped_with_its_reason(tiny_captioner, tmp_path):
    folder = tmp_path / "clips"
    write_clip(folder / "good.mp4", frames=9, height=32, width=32)
    (folder / "broken.mp4").write_bytes(b"\x00" * 64)
    events = tmp_path / "events.jsonl"
    assert caption(folder, tiny_captioner, events) == 0
    items = {e.file: (e.status, e.reason) for e in read_events(events) if e.kind == "item"}
    assert items["good.mp4"] == ("written", None)
    assert items["broken.mp4"][0] == "skipped" and "unreadable" in items["broken.mp4"][1]
    assert not (folder / "broken.txt").exists()


def test_a_model_that_is_no_captioner_is_refused_with_the_flag_named(tiny_models, tmp_path, capsys):
    folder = tmp_path / "clips"
    write_clip(folder / "a.mp4", frames=9, height=32, width=32)
    assert caption(folder, tmp_path / "missing", tmp_path / "e.jsonl") == 2
    assert "--model:" in capsys.readouterr().err
    assert caption(folder, tiny_models["5b"] / "transformer", tmp_path / "e.jsonl") == 2
    assert "--model:" in capsys.readouterr().err
    assert read_events(tmp_path / "e.jsonl")[-1].kind == "failed"
