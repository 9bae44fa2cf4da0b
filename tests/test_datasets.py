"""Every dataset layout people bring, zips of them, hostile zips, and honest reports."""

from __future__ import annotations

import json
import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest

from core.config import make_config
from core.data.__main__ import main as data_main
from core.data.archive import extract_zip
from core.data.dataset import prepare_samples
from core.data.report import build_report
from core.data.synthetic import make_reference_dataset, write_clip
from core.errors import UserError

BUCKETS = ["9x32x32", "17x32x48"]


def report_for(root: Path, **settings):
    config = make_config({"data_root": str(root), "video_resolution_buckets": BUCKETS, **settings})
    return build_report(config)


def files_and_captions(report) -> dict[str, str]:
    return {row.file: row.caption for row in report.samples}


def make_pairs(root: Path) -> Path:
    """Pairs in nested folders with spaces and non-ASCII names, and one still image."""
    from PIL import Image

    write_clip(root / "a clip.mp4", 9, 32, 48, seed=1)
    (root / "a clip.txt").write_text("  a   moving\n square ")
    nested = root / "sub dir" / "ünïcödé"
    write_clip(nested / "vidéo 2.mp4", 17, 32, 48, seed=2)
    (nested / "vidéo 2.txt").write_text("a second clip", encoding="utf-8")
    Image.fromarray(np.full((40, 60, 3), 90, np.uint8)).save(root / "still.png")
    (root / "still.txt").write_text("a still frame")
    return root


def make_metadata(root: Path, kind: str) -> Path:
    write_clip(root / "clips" / "one.mp4", 9, 32, 32, seed=3)
    write_clip(root / "clips" / "two two.mp4", 17, 32, 48, seed=4)
    rows = [
        {"file_name": "clips/one.mp4", "caption": "first"},
        {"file_name": "clips/two two.mp4", "caption": "second"},
    ]
    if kind == "csv":
        lines = ["file_name,caption"] + [f'"{r["file_name"]}","{r["caption"]}"' for r in rows]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    else:
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return root


EXPECTED = {
    "reference": {"videos/00.mp4": "clip zero", "videos/01.mp4": "clip one"},
    "pairs": {
        "a clip.mp4": "a moving square",
        "sub dir/ünïcödé/vidéo 2.mp4": "a second clip",
        "still.png": "a still frame",
    },
    "metadata-csv": {"clips/one.mp4": "first", "clips/two two.mp4": "second"},
    "metadata-jsonl": {"clips/one.mp4": "first", "clips/two two.mp4": "second"},
}


def build_layout(kind: str, root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    if kind == "reference":
        return make_reference_dataset(root, count=2, captions=["clip zero", "clip one"])
    if kind == "pairs":
        return make_pairs(root)
    return make_metadata(root, kind.split("-")[1])


def zip_folder(folder: Path, zip_path: Path, top: str | None = None) -> Path:
    with zipfile.ZipFile(zip_path, "w") as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = str(path.relative_to(folder))
                archive.write(path, f"{top}/{name}" if top else name)
    return zip_path


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_each_layout_is_found_with_its_captions(kind, tmp_path):
    root = build_layout(kind, tmp_path / "data")
    report = report_for(root)
    assert report.layout == kind.split("-")[0]
    assert files_and_captions(report) == EXPECTED[kind]
    assert report.skipped == []


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_a_zip_of_each_layout_gives_the_same_samples(kind, tmp_path):
    root = build_layout(kind, tmp_path / "data")
    # One top folder inside the zip (as most zip tools make them) is looked through.
    archive = zip_folder(root, tmp_path / "dataset.zip", top="my dataset")
    report = report_for(archive, cache_dir=str(tmp_path / "cache"))
    assert files_and_captions(report) == EXPECTED[kind]
    assert Path(report.root).is_relative_to(tmp_path / "cache")


def test_images_train_as_one_frame_samples(tmp_path):
    report = report_for(make_pairs(tmp_path / "data"))
    row = next(r for r in report.samples if r.file == "still.png")
    assert row.bucket == "1x32x48" and row.frames == 1
    assert report.images == 1 and report.videos == 2


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../escaped.txt", "outside the archive"),
        ("/tmp/absolute.txt", "absolute path"),
        ("link", "is a link"),
    ],
)
def test_a_zip_that_tries_to_escape_is_refused_and_writes_nothing(entry, reason, tmp_path):
    archive_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        archive.writestr("good.txt", "fine")
        if entry == "link":
            info = zipfile.ZipInfo("link")
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
        else:
            archive.writestr(entry, "escaped")
    target = tmp_path / "inside" / "extracted"
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(UserError, match=reason):
        extract_zip(archive_path, target)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert not Path("/tmp/absolute.txt").exists()


def test_a_zip_bigger_than_the_cap_is_refused(tmp_path):
    archive_path = tmp_path / "big.zip"
    with zipfile.ZipFile(archive_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * 200_000)
    with pytest.raises(UserError, match="more than"):
        extract_zip(archive_path, tmp_path / "out", max_bytes=100_000)
    assert not (tmp_path / "out").exists()
    with pytest.raises(UserError, match="entries"):
        extract_zip(archive_path, tmp_path / "out", max_files=0)


def test_broken_files_are_skipped_with_reasons(tmp_path):
    root = make_pairs(tmp_path / "data")
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 200)
    (root / "corrupt.txt").write_text("corrupt")
    (root / "zero.mp4").write_bytes(b"")
    (root / "zero.txt").write_text("zero")
    write_clip(root / "short.mp4", 5, 32, 32, seed=9)
    (root / "short.txt").write_text("short")
    shutil.copy(root / "a clip.mp4", root / "copy.mp4")
    (root / "copy.txt").write_text("a copy")
    write_clip(root / "uncaptioned.mp4", 9, 32, 32, seed=8)
    (root / "blank.mp4").write_bytes((root / "a clip.mp4").read_bytes()[:0] or b"")
    (root / "notes.pdf").write_bytes(b"%PDF-1.4")
    (root / "orphan.txt").write_text("no clip")
    report = report_for(root)
    reasons = {row.file: row.reason for row in report.skipped}
    assert reasons["corrupt.mp4"].startswith("unreadable: not a readable video")
    assert reasons["zero.mp4"] == "unreadable: empty file (0 bytes)"
    assert reasons["short.mp4"] == "too short: 5 frames, and the shortest bucket needs 9"
    assert reasons["copy.mp4"] == "duplicate content of a clip.mp4"
    assert reasons["uncaptioned.mp4"] == "no caption (expected uncaptioned.txt beside it)"
    assert reasons["notes.pdf"] == "unsupported type (.pdf)"
    assert reasons["orphan.txt"] == "a caption file without a clip beside it"
    assert set(files_and_captions(report)) == set(EXPECTED["pairs"])


def test_training_goes_on_past_broken_files(tiny_models, tmp_path):
    from core.events import read_events
    from core.train import main as train_main

    root = make_reference_dataset(tmp_path / "data", count=2)
    (root / "videos" / "zero.mp4").write_bytes(b"")
    (root / "videos" / "bad.mp4").write_bytes(b"not a video" * 30)
    (root / "videos.txt").write_text(
        "videos/00.mp4\nvideos/zero.mp4\nvideos/bad.mp4\nvideos/01.mp4\n"
    )
    (root / "prompt.txt").write_text("one\nzero\nbad\ntwo\n")
    out = tmp_path / "out"
    code = train_main(
        [
            "--pretrained_model_name_or_path",
            str(tiny_models["2b"]),
            "--data_root",
            str(root),
            "--video_resolution_buckets",
            "9x32x32",
            "--train_steps",
            "2",
            "--output_dir",
            str(out),
        ]
    )
    assert code == 0
    dataset = next(e for e in read_events(out / "events.jsonl") if e.kind == "dataset")
    assert dataset.samples == 2
    assert {item["file"] for item in dataset.skipped} == {"videos/zero.mp4", "videos/bad.mp4"}


def test_nothing_usable_is_one_sentence_and_exit_2(tmp_path, capsys):
    root = tmp_path / "junk"
    root.mkdir()
    (root / "a.mp4").write_bytes(b"")
    (root / "a.txt").write_text("zero bytes")
    (root / "readme.md").write_text("hello")
    with pytest.raises(UserError, match=r"nothing in .* can be trained on"):
        prepare_samples(make_config({"data_root": str(root)}))
    assert data_main(["report", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: nothing in")


def test_report_command_prints_json(tmp_path, capsys):
    root = build_layout("pairs", tmp_path / "data")
    assert data_main(["report", str(root), "--buckets", *BUCKETS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["buckets"] == {"17x32x48": 1, "1x32x48": 1, "9x32x32": 1}
    assert report["total_frames"] == 17 + 1 + 9


def test_captions_longer_than_the_text_encoder_reads_are_reported(tiny_models, tmp_path, capsys):
    root = tmp_path / "data"
    write_clip(root / "long.mp4", 9, 32, 32, seed=1)
    (root / "long.txt").write_text(" ".join(["word"] * 300))
    write_clip(root / "short.mp4", 9, 32, 32, seed=2)
    (root / "short.txt").write_text("a short caption")
    assert (
        data_main(["report", str(root), "--buckets", "9x32x32", "--model", str(tiny_models["5b"])])
        == 0
    )
    out = capsys.readouterr().out
    assert "1 captions are longer than the text encoder's 226 tokens" in out
    assert "    long.mp4" in out


def test_caption_whitespace_and_trigger_word(tmp_path):
    root = build_layout("pairs", tmp_path / "data")
    report = report_for(root, id_token="BW_STYLE")
    assert files_and_captions(report)["a clip.mp4"] == "BW_STYLE a moving square"


def test_frame_counts_the_family_cannot_use_are_refused_with_the_nearest(
    tiny_models, reference_dataset, tmp_path, capsys
):
    from core.train import main as train_main

    code = train_main(
        [
            "--pretrained_model_name_or_path",
            str(tiny_models["1.5"]),
            "--data_root",
            str(reference_dataset),
            "--output_dir",
            str(tmp_path),
            "--video_resolution_buckets",
            "45x32x32",
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "45x32x32 has 45 frames, but CogVideoX1.5 needs 8k+1 frames" in err
    assert "the nearest are 41 or 49" in err


# ---- image-to-video: the image each clip starts from ------------------------------------------


def _image(path: Path, colour: int = 120) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((40, 60, 3), colour, np.uint8)).save(path)
    return path


@pytest.mark.parametrize("layout", ["reference", "metadata", "pairs"])
def test_a_dataset_names_the_image_a_clip_starts_from_else_its_first_frame(layout, tmp_path):
    root = tmp_path / layout
    if layout == "reference":
        make_reference_dataset(root, count=2)
        _image(root / "images" / "start.jpg")
        _image(root / "images" / "other.png", colour=30)
        (root / "images.txt").write_text("images/start.jpg\nimages/other.png\n")
        expected = {"videos/00.mp4": "images/start.jpg", "videos/01.mp4": "images/other.png"}
    elif layout == "metadata":
        make_metadata(root, "jsonl")
        _image(root / "first.webp")
        rows = [
            {"file_name": "clips/one.mp4", "caption": "first", "image": "first.webp"},
            {"file_name": "clips/two two.mp4", "caption": "second", "image": ""},
        ]
        (root / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        expected = {"clips/one.mp4": "first.webp", "clips/two two.mp4": "first frame"}
    else:
        make_pairs(root)
        _image(root / "a clip.png")
        expected = {"a clip.mp4": "a clip.png", "sub dir/ünïcödé/vidéo 2.mp4": "first frame"}

    report = report_for(root)

    images = {row.file: row.image for row in report.samples if row.image}
    assert images == expected
    # An image beside its clip is that clip's image, not a sample of its own.
    assert "a clip.png" not in files_and_captions(report)


def test_image_to_video_skips_lone_images_and_clips_whose_image_is_unreadable(tmp_path):
    root = make_pairs(tmp_path / "pairs")
    (root / "a clip.png").write_bytes(b"not an image")
    config = make_config({"data_root": str(root), "video_resolution_buckets": BUCKETS})

    prepared = prepare_samples(config, require_samples=False, image_to_video=True)

    reasons = {item.path.name: item.reason for item in prepared.skipped}
    assert reasons["still.png"] == "an image alone: image-to-video trains on clips"
    assert reasons["a clip.mp4"].startswith("its image a clip.png: not a readable image")
    assert [s.path.name for s in prepared.samples] == ["vidéo 2.mp4"]


def test_an_images_file_that_does_not_match_the_clips_is_one_sentence(tmp_path):
    root = make_reference_dataset(tmp_path / "ref", count=2)
    (root / "images.txt").write_text("videos/00.mp4\n")
    expected = r"^--image_column: images.txt lists 1 image but videos.txt lists 2 clips"
    with pytest.raises(UserError, match=expected):
        report_for(root)
