"""Split and caption as jobs: the same runner, store and queue as training.

One pipeline runs headless through the job runner, as the page runs it: a long video is split,
the clips captioned, and a CPU training run queued on the result; all three hold "the CPU", so
each starts only when the one before has exited (a captioner has given its memory back before a
training job queued behind it starts). The training run is stopped once it starts: training
on a split and captioned dataset is the browser flow's part (tests/browser/test_flow.py).
"""

from __future__ import annotations

from core.data.synthetic import write_long_video
from jobs.spec import JobSpec
from tests.test_jobs import wait_for


def test_spec_glue_builds_the_commands_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    split = JobSpec(
        name="cut",
        kind="split",
        split={"inputs": ["long.mp4"], "out": "clips", "frames": 17, "size": "480x720"},
    )
    argv = split.to_argv(tmp_path / "job" / "spec.json")
    assert argv[1:5] == ["-m", "core.data", "split", str(tmp_path / "long.mp4")]
    assert argv[5] == str(tmp_path / "clips")
    assert argv[argv.index("--frames") + 1] == "17" and "--fps" not in argv
    assert argv[-2:] == ["--events", str(tmp_path / "job" / "events.jsonl")]
    caption = JobSpec(
        kind="caption",
        gpu_ids=[0],
        caption={"folder": "clips", "prompt": "-describe", "prefix": "SQR", "overwrite": True},
    )
    argv = caption.to_argv(tmp_path / "job" / "spec.json")
    assert argv[3:5] == ["caption", str(tmp_path / "clips")]
    assert "--prompt=-describe" in argv and "--prefix=SQR" in argv and "--overwrite" in argv
    assert "--overwrite-person" not in argv and caption.exclusive
    assert caption.show_command().startswith("python -m core.data caption ")


def test_split_caption_train_run_in_turn_through_the_queue(
    runner, tiny_models, tiny_captioner, tmp_path
):
    source = tmp_path / "long.mp4"
    write_long_video(source, height=32, width=48)
    clips = tmp_path / "clips"
    split = runner.submit(
        JobSpec(
            name="cut",
            kind="split",
            split={
                "inputs": [str(source)],
                "out": str(clips),
                "frames": 9,
                "max_clips_per_scene": 1,
            },
        )
    )
    caption_spec = {"folder": str(clips), "model": str(tiny_captioner), "frames": 2}
    caption = runner.submit(
        JobSpec(name="describe", kind="caption", caption={**caption_spec, "max_new_tokens": 8})
    )
    train = runner.submit(
        JobSpec(
            name="learn",
            train={
                "pretrained_model_name_or_path": str(tiny_models["5b"]),
                "data_root": str(clips),
                "video_resolution_buckets": ["9x32x32"],
                "train_steps": 10_000,  # still running when the test stops it
                "rank": 4,
                "lora_alpha": 4,
            },
        )
    )
    assert [runner.store.get(j.id).status for j in (split, caption, train)] == [
        "running",
        "queued",
        "queued",
    ]
    for before, after in ((split, caption), (caption, train)):

        def started(job=after):
            runner.poll()
            return runner.store.get(job.id).status != "queued"

        wait_for(started, timeout=300, what=f"{after.name} to start")
        previous = runner.store.get(before.id)
        assert previous.status == "succeeded", (previous.name, previous.reason)
        assert not runner._job_processes(previous), f"{before.name} still runs"
    runner.stop(train.id)
    described = runner.store.get(caption.id)
    assert described.last_step == described.total_steps == len(list(clips.glob("*.mp4"))) == 6
    assert sorted(p.stem for p in clips.glob("*.txt")) == sorted(
        p.stem for p in clips.glob("*.mp4")
    )
    assert runner.wait(train.id, timeout=120).status == "stopped"
