"""The Dataset tab's split and caption controls, driven in-process as the page drives them."""

from __future__ import annotations

import gradio as gr

from core.data.caption_origin import CaptionRecord
from core.data.synthetic import write_clip, write_long_video
from tests.test_jobs import wait_for
from ui.dataset_prep import caption_rows
from ui.dataset_tab import DatasetTab
from ui.studio import Studio


def make_tab(studio: Studio) -> DatasetTab:
    tab = DatasetTab(studio)
    with gr.Blocks():
        tab.render(gr.Textbox("9x32x32"), gr.Textbox(), gr.Textbox())
    return tab


def test_split_controls_start_a_job_and_open_its_clips(tmp_path):
    data = tmp_path / "data"
    video = data / "long take.mp4"
    write_long_video(video, height=32, width=48)
    studio = Studio(tmp_path / "workspace", data_dirs=[data])
    prep = make_tab(studio).prep
    outside = tmp_path / "elsewhere.mp4"
    outside.write_bytes(b"")
    status, *_ = prep.start_split(None, str(outside), "", "5b", 9, 0, "", "center", 1.0, 1)
    assert "Long videos:" in status and "outside the folders this app may use" in status
    status, job_id, _ = prep.start_split(None, str(video), "", "5b", 9, 0, "", "center", 1.0, 1)
    assert "Splitting 1 video into <b>long take clips</b>" in status

    def followed():
        result = prep.follow(job_id, None, "9x32x32")
        return result if result[1] is None else None  # None: the job has ended

    status, _, _, choice, *_ = wait_for(followed, timeout=120, what="the split to end")
    assert "done, 6 clips" in status
    clips = studio.datasets_dir / "long take clips"
    assert choice.value == str(clips) and len(list(clips.glob("*.mp4"))) == 6
    status, *_ = prep.start_caption(None, "Qwen/Qwen3-VL-8B-Instruct", "", "", False, False, "CPU")
    assert "Choose a dataset first" in status


def test_the_caption_table_says_who_wrote_each_caption(tmp_path):
    for name in ("a", "b", "c"):
        write_clip(tmp_path / f"{name}.mp4", frames=5)
    record = CaptionRecord(tmp_path)
    record.add("a.mp4", "SQR the model's words", "tiny", "digest")
    record.add("b.mp4", "SQR the model's first words", "tiny", "digest")
    captions = {"a.mp4": "SQR the model's words", "b.mp4": "a person's words", "c.mp4": "mine"}
    assert caption_rows(tmp_path, captions) == [
        ["a.mp4", "SQR the model's words", "model"],
        ["b.mp4", "a person's words", "person (edited)"],
        ["c.mp4", "mine", "person"],
    ]
