"""The scene split on a generated long video whose cuts, fade and frozen stretch are known.

Everything runs in this process (PySceneDetect and PyAV, no torch): a split of the 26 s video
takes about a second.
"""

from __future__ import annotations

import itertools
import json
import threading
from pathlib import Path

import av
import pytest

from core.data.__main__ import main as data_main
from core.data.split import SplitProgress, options_from, plan_clips, split_sources
from core.data.split_record import SPLIT_FILE, SplitOptions, read_record
from core.data.synthetic import scene_of, write_long_video
from core.errors import UserError
from core.events import read_events


@pytest.fixture(scope="module")
def long_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("sources") / "holiday ünïcode.mp4"
    write_long_video(path)
    return path


@pytest.fixture(scope="module")
def split_out(long_video, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("split") / "clips"
    assert data_main(["split", str(long_video), str(out)]) == 0
    return out


def decode(path: Path):
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pixel_format = stream.codec_context.pix_fmt
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    return frames, pixel_format


def test_every_clip_lies_inside_one_scene_by_its_content(split_out):
    clips = sorted(split_out.glob("*.mp4"))
    seen_scenes = set()
    for clip in clips:
        frames, pixel_format = decode(clip)
        assert (len(frames) - 1) % 4 == 0 and len(frames) >= 5, clip.name
        assert pixel_format == "yuv420p"
        scenes = {scene_of(frame) for frame in frames} - {None}  # None: a frame gone black
        assert len(scenes) == 1, f"{clip.name} shows scenes {scenes}"
        seen_scenes |= scenes
    assert seen_scenes == {0, 1, 2, 3, 4}
    assert all(clip.name.startswith("holiday ünïcode ") for clip in clips)


def test_the_frozen_stretch_is_left_out_with_its_reason(split_out):
    (entry,) = read_record(split_out).sources
    static = [part for part in entry.dropped if part.reason.startswith("static")]
    assert len(static) == 1
    assert static[0].start == pytest.approx(20.0, abs=0.1)
    assert static[0].end == pytest.approx(23.0, abs=0.1)
    for clip in entry.clips:  # no clip shows any of the frozen stretch
        assert clip.end <= static[0].start or clip.start >= static[0].end
    recorded = json.loads((split_out / SPLIT_FILE).read_text())["sources"][0]
    assert recorded["source"].endswith("holiday ünïcode.mp4") and recorded["complete"]


def test_a_second_run_writes_nothing(split_out, long_video, tmp_path):
    before = {path.name: path.stat().st_mtime_ns for path in split_out.iterdir()}
    events = tmp_path / "events.jsonl"
    assert data_main(["split", str(long_video), str(split_out), "--events", str(events)]) == 0
    assert {path.name: path.stat().st_mtime_ns for path in split_out.iterdir()} == before
    kinds = [event.kind for event in read_events(events)]
    assert "item" not in kinds and kinds[-1] == "done"


def test_a_stopped_split_continues_where_it_stopped(long_video, split_out, tmp_path):
    out = tmp_path / "clips"
    stop = threading.Event()
    written = []

    def on_clip(source, name, done, total):
        written.append(name)
        stop.set()  # as SIGINT does, after the first clip

    options = options_from("5b")
    split_sources([long_video], out, options, SplitProgress(on_clip=on_clip), stop)
    assert len(written) == 1 and not read_record(out).sources[0].complete
    split_sources([long_video], out, options, SplitProgress(on_clip=on_clip))
    assert written[0] not in written[1:]
    assert sorted(p.name for p in out.glob("*.mp4")) == sorted(
        p.name for p in split_out.glob("*.mp4")
    )
    assert read_record(out).sources[0].complete


def test_unreadable_sources_are_recorded_and_the_rest_is_split(tmp_path, long_video):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all" * 100)
    out = tmp_path / "clips"
    events = tmp_path / "events.jsonl"
    argv = ["split", str(broken), str(long_video), str(out), "--events", str(events)]
    argv += ["--frames", "9", "--max-clips-per-scene", "1", "--size", "32x48"]
    assert data_main(argv) == 0
    broken_entry, good_entry = read_record(out).sources
    assert broken_entry.dropped[0].reason.startswith("unreadable")
    assert len(good_entry.clips) == 6  # one per scene part: 5 scenes, scene 4 cut in two
    frames, _ = decode(out / good_entry.clips[0].file)
    assert len(frames) == 9 and frames[0].shape == (32, 48, 3)
    dropped = [e for e in read_events(events) if e.kind == "item" and e.status == "dropped"]
    assert {e.file for e in dropped} == {"broken.mp4", long_video.name}


def test_flags_that_cannot_work_are_refused_with_the_flag_named(tmp_path, long_video, capsys):
    assert data_main(["split", str(long_video), str(tmp_path / "o"), "--frames", "50"]) == 2
    assert "--frames: 50 is not a frame count" in capsys.readouterr().err
    with pytest.raises(UserError, match="8k\\+1"):
        options_from("1.5", frames=13)
    out = tmp_path / "other"
    split_sources([long_video], out, options_from("5b", frames=9, max_clips_per_scene=1))
    with pytest.raises(UserError, match="other settings"):
        split_sources([long_video], out, options_from("5b", frames=17))


# ---- planning, as data ------------------------------------------------------------------------


def test_clips_take_the_longest_count_the_family_accepts_and_spread_over_the_scene():
    scenes = [(0, 240), (240, 260), (260, 2660)]  # 10 s, 0.8 s, 100 s at 24 fps
    clips, dropped = plan_clips(scenes, [], 24.0, SplitOptions(max_clips_per_scene=3))
    assert [(c.scene, c.frames) for c in clips] == [(0, 77 - 28), (2, 49), (2, 49), (2, 49)]
    assert dropped == [(240, 260, "too short: 0.83 s, a clip needs 1.00 s")]
    long = [c for c in clips if c.scene == 2]
    gaps = [b.start - a.end for a, b in itertools.pairwise(long)]
    assert min(gaps) > 20  # spread over the 100 s, not bunched at its start
    one_five = SplitOptions(frame_step=8, max_frames=81, fps=16.0)
    clips, _ = plan_clips([(0, 100)], [], 24.0, one_five)  # 66 frames at 16 fps
    assert [c.frames for c in clips] == [65]
    assert all(i < 100 for i in clips[0].source_indices(24.0, 100))


def test_a_still_run_cuts_its_scene_in_two_and_is_left_out():
    clips, dropped = plan_clips([(0, 480)], [(200, 300)], 24.0, SplitOptions(frames=9))
    assert dropped == [(200, 300, "static: nothing moves for 4.2 s")]
    for clip in clips:
        shown = clip.source_indices(24.0, 480)
        assert max(shown) < 200 or min(shown) >= 300


def test_two_sources_with_one_name_get_clips_that_never_collide(tmp_path, long_video):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "take.mp4").write_bytes(long_video.read_bytes())
    out = tmp_path / "clips"
    options = options_from("5b", frames=5, max_clips_per_scene=1, size="16x16")
    record = split_sources([tmp_path / "a/take.mp4", tmp_path / "b/take.mp4"], out, options)
    assert [entry.prefix for entry in record.sources] == ["take", "take (2)"]
    assert len(list(out.glob("*.mp4"))) == 2 * len(record.sources[0].clips)
