"""`python -m core.data caption`: a dataset's clips captioned by a vision-language model.

    python -m core.data caption FOLDER [--model ID] [--prompt TEXT] [--prefix TRIGGER]
        [--frames N] [--overwrite] [--overwrite-person] [--batch-size B] [--max-new-tokens T]

Clips without a caption get one. `--overwrite` also replaces the captions the model wrote; a
caption a person wrote, or edited after the model wrote it (core/data/caption_origin.py keeps
what the model wrote, so an edit is known), is replaced only with `--overwrite-person`.
Each caption is written atomically beside its clip (`name.txt`), or into the layout's caption
file. An unreadable clip is skipped with its reason. A stopped run continues when the same
command runs again: clips already captioned with the same settings are not captioned twice.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

from core.data.caption_origin import EDITED, MODEL, CaptionRecord, normalize
from core.data.dataset import relative_name
from core.data.discover import discover, media_files
from core.errors import UserError
from core.files import write_text_atomic

DEFAULT_FRAMES = 8
DEFAULT_MODEL = "Qwen/Qwen3-VL-8B-Instruct"  # README, "Automatic captions", says why
DEFAULT_PROMPT = (
    "Describe this video for a text-to-video model, in one paragraph of 50 to 100 words: the "
    "main subject and what it looks like, how it moves and what changes over time, how the "
    "camera moves, and the setting, light and style. Begin with the subject; do not mention "
    "frames, images or the video itself."
)


@dataclass(frozen=True)
class CaptionSettings:
    model: str
    prompt: str
    prefix: str = ""
    frames: int = DEFAULT_FRAMES
    overwrite: bool = False
    overwrite_person: bool = False  # the person says their captions may go
    batch_size: int = 1
    max_new_tokens: int = 200

    @property
    def digest(self) -> str:
        """Identifies what the captions depend on: rerunning the same settings continues."""
        keys = ("model", "prompt", "prefix", "frames", "max_new_tokens")
        text = json.dumps({key: getattr(self, key) for key in keys}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Clip:
    name: str  # relative to the dataset folder
    path: Path
    caption: str | None


@dataclass
class CaptionPlan:
    todo: list[Clip]
    done_before: int  # captioned with these settings by an earlier attempt
    kept: list[tuple[str, str]]  # (clip, why its caption stays)
    layout: str


def dataset_clips(root: Path) -> tuple[str, list[Clip]]:
    """Every clip (and image) of the dataset with its current caption (None: it has none)."""
    found = discover(root)
    if found.layout != "pairs":
        return found.layout, [
            Clip(relative_name(s.path, root), s.path, s.caption) for s in found.samples
        ]
    clips = []
    for path in media_files(root):
        caption_file = path.with_suffix(".txt")
        try:
            caption = (
                caption_file.read_text(encoding="utf-8-sig") if caption_file.is_file() else None
            )
        except UnicodeDecodeError:
            caption = None  # the report names the broken file; a new caption replaces it
        clips.append(Clip(relative_name(path.resolve(), root), path, caption))
    return "pairs", clips


def plan(root: Path, settings: CaptionSettings, record: CaptionRecord) -> CaptionPlan:
    layout, clips = dataset_clips(root)
    todo, kept, done_before = [], [], 0
    for clip in clips:
        origin = record.origin(clip.name, clip.caption)
        last = record.last(clip.name)
        if origin is None:
            todo.append(clip)
        elif origin == MODEL:
            if last.settings == settings.digest and normalize(clip.caption) == last.text:
                done_before += 1  # written with these very settings: a rerun continues past it
            elif settings.overwrite or settings.overwrite_person:
                todo.append(clip)
            else:
                kept.append((clip.name, "it has a caption the model wrote"))
        elif settings.overwrite_person:
            todo.append(clip)
        else:
            why = "a person edited the model's caption" if origin == EDITED else "a person wrote it"
            kept.append((clip.name, why))
    return CaptionPlan(todo, done_before, kept, layout)


def clip_frames(path: Path, count: int):
    """`count` frames spread over the clip (all of a shorter one), with their times."""
    from core.captioner import ClipFrames
    from core.data.buckets import frame_indices
    from core.data.video import probe, read_frames

    info = probe(path)
    indices = frame_indices(info.frames, min(count, info.frames))
    fps = info.fps or 1.0
    return ClipFrames(
        frames=read_frames(path, indices),
        seconds=[index / fps for index in indices],
        duration=info.duration,
    )


def caption_folder(
    root: Path,
    settings: CaptionSettings,
    reporter,
    stop: threading.Event,
    captioner=None,
) -> tuple[int, list[str]]:
    """Caption what the settings ask for; returns (clips captioned, [folder])."""
    from core.data.video import UnreadableMedia

    if not root.is_dir():
        raise UserError(f"FOLDER: {root} is not a folder")
    record = CaptionRecord(root)
    work = plan(root, settings, record)
    for name, why in work.kept:
        reporter.item(name, "skipped", f"kept: {why}")
    total = len(work.todo) + work.done_before
    done = work.done_before
    if not work.todo:
        reporter.progress("captioning clips", done, total)
        return done, [str(root)]
    if captioner is None:
        from core.captioner import Captioner

        reporter.progress("loading the captioner", 0, 1)
        captioner = Captioner(settings.model)
    reporter.progress("captioning clips", done, total)
    written = unreadable = 0
    try:
        for start in range(0, len(work.todo), settings.batch_size):
            if stop.is_set():
                break
            batch, frames = [], []
            for clip in work.todo[start : start + settings.batch_size]:
                try:
                    frames.append(clip_frames(clip.path, settings.frames))
                    batch.append(clip)
                except UnreadableMedia as error:
                    unreadable += 1
                    reporter.item(clip.name, "skipped", f"unreadable: {error}")
            if not batch:
                continue
            texts = captioner.describe(frames, settings.prompt, settings.max_new_tokens)
            for clip, text in zip(batch, texts, strict=True):
                if not text:
                    reporter.item(clip.name, "skipped", "the model wrote nothing")
                    continue
                caption = f"{settings.prefix.strip()} {text}".strip()
                record.add(clip.name, caption, settings.model, settings.digest)
                _write_caption(root, clip, caption, work.layout)
                written += 1
                done += 1
                reporter.item(clip.name, "written")
                reporter.progress("captioning clips", done, total)
    finally:
        captioner.close()
    if not written and unreadable == len(work.todo):
        raise UserError(f"none of the {unreadable} clips to caption in {root} could be read")
    return done, [str(root)]


def _write_caption(root: Path, clip: Clip, caption: str, layout: str) -> None:
    if layout == "pairs":
        write_text_atomic(clip.path.with_suffix(".txt"), caption + "\n")
    else:
        from core.data.captions import write_captions

        write_captions(root, {clip.name: caption}, layout=layout)


def run_caption(args) -> int:
    """`python -m core.data caption` with parsed arguments; returns the exit status."""
    from core.data.preparation import run_reported

    def work(reporter, stop):
        if args.frames < 1:
            raise UserError("--frames: must be at least 1")
        if args.batch_size < 1:
            raise UserError("--batch-size: must be at least 1")
        if not 1 <= args.max_new_tokens <= 1000:
            raise UserError("--max-new-tokens: must be 1 to 1000")
        settings = CaptionSettings(
            model=args.model or DEFAULT_MODEL,
            prompt=args.prompt or DEFAULT_PROMPT,
            prefix=args.prefix or "",
            frames=args.frames,
            overwrite=args.overwrite,
            overwrite_person=args.overwrite_person,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        return caption_folder(Path(args.folder).resolve(), settings, reporter, stop)

    return run_reported("caption", args.events, work)
