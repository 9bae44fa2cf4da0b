"""`python -m core.data split`: long videos cut into scene clips a CogVideoX family trains on.

    python -m core.data split INPUT... OUT [--family 2b|5b|1.5|MODEL] [--frames N] [--fps F]
        [--size HxW] [--crop center|none] [--min-seconds S] [--max-clips-per-scene K]

Each source is scanned once for scene boundaries and frozen stretches (core/data/scenes.py);
every scene then yields clips that never cross a boundary, with a frame count the family
accepts (4k+1; 8k+1 for 1.5), by default the largest the scene allows up to the family's native
length, at the chosen frame rate, optionally resized and center-cropped, encoded H.264 yuv420p
(PyAV; no system ffmpeg). `OUT/split.json` records each source's scenes, clips and every part
left out with the reason; it is rewritten after each clip, so a stopped run continues where it
stopped and a second run over the same sources writes nothing.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.data.split_record import (
    SPLIT_FILE,
    ClipRecord,
    DroppedPart,
    SourceRecord,
    SplitOptions,
    SplitRecord,
    clip_name,
    family_options,
    read_record,
    safe_stem,
    time_stamp,
    unique_prefix,
    write_record,
)
from core.errors import UserError

# ---- planning (pure: scenes in, clips and dropped parts out) ----------------------------------


def valid_length(available: int, step: int, most: int) -> int:
    """The largest step*k+1 frame count (k >= 1) not above `available` or `most`; 0 if none."""
    top = min(available, most)
    if top < step + 1:
        return 0
    return (top - 1) // step * step + 1


@dataclass
class PlannedClip:
    scene: int
    start_frame: int  # the clip's first frame at the output rate, counted from the source start
    frames: int
    fps: float

    @property
    def start(self) -> float:
        return self.start_frame / self.fps

    @property
    def end(self) -> float:
        return (self.start_frame + self.frames) / self.fps

    def source_indices(self, source_fps: float, source_frames: int) -> list[int]:
        """The source frame shown at each output frame's time (nearest earlier frame)."""
        ratio = source_fps / self.fps
        return [
            min(source_frames - 1, math.floor((self.start_frame + k) * ratio + 1e-6))
            for k in range(self.frames)
        ]


def plan_clips(
    scenes: list[tuple[int, int]],
    still_runs: list[tuple[int, int]],
    source_fps: float,
    options: SplitOptions,
) -> tuple[list[PlannedClip], list[tuple[int, int, str]]]:
    """Clips inside each scene (still stretches cut out), and the parts left out with reasons.

    Frame numbers in are the source's; a clip's frames are output frames whose times fall inside
    its part of the scene, so no clip ever shows a frame of a neighbouring scene.
    """
    clips: list[PlannedClip] = []
    dropped: list[tuple[int, int, str]] = []
    for scene_index, (first, end) in enumerate(scenes):
        parts = [(first, end)]
        for still_first, still_end in still_runs:
            cut_parts = []
            for part_first, part_end in parts:
                lo, hi = max(part_first, still_first), min(part_end, still_end)
                if lo >= hi:
                    cut_parts.append((part_first, part_end))
                    continue
                seconds = (hi - lo) / source_fps
                dropped.append((lo, hi, f"static: nothing moves for {seconds:.1f} s"))
                cut_parts += [p for p in ((part_first, lo), (hi, part_end)) if p[0] < p[1]]
            parts = cut_parts
        for part_first, part_end in parts:
            placed = _place_clips(scene_index, part_first, part_end, source_fps, options)
            if placed:
                clips += placed
            else:
                seconds = (part_end - part_first) / source_fps
                dropped.append((part_first, part_end, _too_short(seconds, options)))
    return clips, sorted(dropped)


def _too_short(seconds: float, options: SplitOptions) -> str:
    needed = max(options.min_seconds, (options.frames or options.frame_step + 1) / options.fps)
    return f"too short: {seconds:.2f} s, a clip needs {needed:.2f} s"


def _place_clips(
    scene: int, first: int, end: int, source_fps: float, options: SplitOptions
) -> list[PlannedClip]:
    """Clips spread evenly over one part of a scene [first, end) (source frames)."""
    if (end - first) / source_fps < options.min_seconds:
        return []
    # Output frames k whose time k/fps lies in [first/source_fps, end/source_fps).
    out_first = math.ceil(first * options.fps / source_fps - 1e-9)
    out_end = math.ceil(end * options.fps / source_fps - 1e-9)
    available = out_end - out_first
    if options.frames:
        length = options.frames if available >= options.frames else 0
    else:
        length = valid_length(available, options.frame_step, options.max_frames)
    if not length:
        return []
    count = available // length
    if options.max_clips_per_scene:
        count = min(count, options.max_clips_per_scene)
    spare = available - count * length
    gap = spare / count  # the unused frames, shared out between the clips
    return [
        PlannedClip(scene, out_first + round(gap / 2 + index * (length + gap)), length, options.fps)
        for index in range(count)
    ]


# ---- writing clips ----------------------------------------------------------------------------


def target_size(height: int, width: int, options: SplitOptions) -> tuple[int, int, int, int]:
    """(scaled height, scaled width, crop height, crop width), all even (yuv420p needs it)."""
    if options.size is None:
        return height, width, height - height % 2, width - width % 2
    want_h, want_w = options.size
    if options.crop == "center":  # cover the target, then cut the middle out
        scale = max(want_h / height, want_w / width)
        scaled_h, scaled_w = max(want_h, round(height * scale)), max(want_w, round(width * scale))
        return scaled_h, scaled_w, want_h - want_h % 2, want_w - want_w % 2
    scale = min(want_h / height, want_w / width)  # fit inside, keep the whole picture
    scaled_h, scaled_w = max(2, round(height * scale)), max(2, round(width * scale))
    return scaled_h, scaled_w, scaled_h - scaled_h % 2, scaled_w - scaled_w % 2


def write_clips(
    source: Path,
    out: Path,
    clips: list[tuple[str, PlannedClip]],
    source_fps: float,
    source_frames: int,
    options: SplitOptions,
    on_written: Callable[[str], None],
    stop: threading.Event | None = None,
) -> None:
    """Decode the source once, in order, and write each clip as soon as its frames are in."""
    import av

    from core.data.video import UnreadableMedia, write_video

    wanted: dict[int, list[tuple[int, int]]] = {}  # source frame -> [(clip, position)]
    for number, (_, clip) in enumerate(clips):
        for position, index in enumerate(clip.source_indices(source_fps, source_frames)):
            wanted.setdefault(index, []).append((number, position))
    buffers: dict[int, list[np.ndarray | None]] = {}
    remaining = len(clips)
    try:
        with av.open(str(source)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            shape = None
            for index, frame in enumerate(container.decode(stream)):
                if stop is not None and stop.is_set():
                    return  # a clip half-gathered is gathered again on resume
                if index not in wanted:
                    continue
                if shape is None:
                    shape = target_size(frame.height, frame.width, options)
                picture = _resize(frame, *shape)
                for number, position in wanted.pop(index):
                    buffer = buffers.setdefault(number, [None] * clips[number][1].frames)
                    buffer[position] = picture
                    if all(item is not None for item in buffer):
                        name, clip = clips[number]
                        write_video(out / name, np.stack(buffer), fps=_rate(options.fps))
                        del buffers[number]
                        remaining -= 1
                        on_written(name)
                if not remaining:
                    return
    except (av.FFmpegError, OSError) as error:
        raise UnreadableMedia(f"decoding failed ({str(error).strip()[:160]})") from None


def _rate(fps: float):
    """The encoder's frame rate: an int where it is one, else an exact fraction."""
    from fractions import Fraction

    return int(fps) if float(fps).is_integer() else Fraction(fps).limit_denominator(1001)


def _resize(frame, scaled_h: int, scaled_w: int, crop_h: int, crop_w: int) -> np.ndarray:
    if (scaled_h, scaled_w) != (frame.height, frame.width):
        frame = frame.reformat(width=scaled_w, height=scaled_h, interpolation="AREA")
    picture = frame.to_ndarray(format="rgb24")
    top, left = (scaled_h - crop_h) // 2, (scaled_w - crop_w) // 2
    return np.ascontiguousarray(picture[top : top + crop_h, left : left + crop_w])


# ---- the command ------------------------------------------------------------------------------


@dataclass
class SplitProgress:
    """Callbacks the command and the job report through."""

    on_scan: Callable[[str, int, int], None] = lambda source, done, total: None
    on_clip: Callable[[str, str, int, int], None] = lambda source, name, done, total: None
    on_dropped: Callable[[str, str], None] = lambda source, reason: None


def split_sources(
    sources: list[Path],
    out: Path,
    options: SplitOptions,
    progress: SplitProgress | None = None,
    stop: threading.Event | None = None,
) -> SplitRecord:
    """Split every source into OUT; returns the record (also in OUT/split.json).

    Returns early, the record saved, when `stop` is set. Unreadable sources are recorded with
    the reason and skipped.
    """
    progress = progress or SplitProgress()
    missing = [str(path) for path in sources if not Path(path).is_file()]
    if missing:
        raise UserError(f"INPUT: {missing[0]} does not exist")
    out.mkdir(parents=True, exist_ok=True)
    record = read_record(out)
    for path in sources:
        if stop is not None and stop.is_set():
            break
        entry = _entry_for(record, Path(path).resolve(), options, out)
        if entry.complete:
            continue
        _split_one(Path(path).resolve(), out, entry, record, progress, stop)
    return record


def _entry_for(record: SplitRecord, source: Path, options: SplitOptions, out: Path):
    stat = source.stat()
    for entry in record.sources:
        if entry.source != str(source):
            continue
        if entry.options != options:
            raise UserError(
                f"{out} already holds clips of {source.name} split with other settings; "
                "choose another output folder, or delete those clips and split.json"
            )
        if (entry.size, entry.mtime) != (stat.st_size, stat.st_mtime):
            raise UserError(
                f"{source.name} changed since it was split into {out}; choose another output "
                "folder, or delete its clips and split.json to split it again"
            )
        return entry
    taken = {entry.prefix for entry in record.sources}
    entry = SourceRecord(
        source=str(source),
        size=stat.st_size,
        mtime=stat.st_mtime,
        prefix=unique_prefix(safe_stem(source.stem), taken),
        options=options,
    )
    record.sources.append(entry)
    return entry


def _split_one(
    source: Path,
    out: Path,
    entry: SourceRecord,
    record: SplitRecord,
    progress: SplitProgress,
    stop: threading.Event | None,
) -> None:
    from core.data.scenes import ScanStopped, scan_video
    from core.data.video import UnreadableMedia

    try:
        if not entry.clips and not entry.dropped:
            try:
                scan = scan_video(
                    str(source),
                    on_frame=lambda done, total: progress.on_scan(source.name, done, total),
                    stop=stop,
                )
            except ScanStopped:
                return
            _plan_entry(entry, scan, out)
            write_record(out, record)
            for part in entry.dropped:
                span = f"{time_stamp(part.start)}-{time_stamp(part.end)}"
                progress.on_dropped(source.name, f"{span} {part.reason}")
        todo = [clip for clip in entry.clips if not (clip.written and (out / clip.file).is_file())]
        done = len(entry.clips) - len(todo)
        by_name = {clip.file: clip for clip in entry.clips}

        def written(name: str) -> None:
            nonlocal done
            by_name[name].written = True
            done += 1
            write_record(out, record)
            progress.on_clip(source.name, name, done, len(entry.clips))

        planned = [(clip.file, _replan(clip, entry.options)) for clip in todo]
        frames = round(entry.duration * entry.fps)
        write_clips(source, out, planned, entry.fps, frames, entry.options, written, stop)
    except UnreadableMedia as error:
        entry.dropped = [DroppedPart(start=0.0, end=entry.duration, reason=f"unreadable: {error}")]
        entry.clips = []
        progress.on_dropped(source.name, f"unreadable: {error}")
    if all(clip.written for clip in entry.clips) and not (stop is not None and stop.is_set()):
        entry.complete = True
    write_record(out, record)


def _plan_entry(entry: SourceRecord, scan, out: Path) -> None:
    options = entry.options
    min_still = max(1, round(options.min_seconds * scan.fps))
    clips, dropped = plan_clips(scan.scenes, scan.still_runs(min_still), scan.fps, options)
    entry.fps = scan.fps
    entry.duration = scan.frames / scan.fps
    entry.scenes = [(round(a / scan.fps, 3), round(b / scan.fps, 3)) for a, b in scan.scenes]
    names: set[str] = set()
    for clip in clips:
        name = clip_name(entry.prefix, clip.start, clip.end)
        if name in names or (out / name).exists():
            raise UserError(f"{out / name} exists already; choose an empty output folder")
        names.add(name)
        entry.clips.append(
            ClipRecord(
                file=name,
                start=round(clip.start, 3),
                end=round(clip.end, 3),
                frames=clip.frames,
                scene=clip.scene,
            )
        )
    entry.dropped = [
        DroppedPart(start=round(a / scan.fps, 3), end=round(b / scan.fps, 3), reason=reason)
        for a, b, reason in dropped
    ]


def _replan(clip: ClipRecord, options: SplitOptions) -> PlannedClip:
    return PlannedClip(clip.scene, round(clip.start * options.fps), clip.frames, options.fps)


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text or "")
    if not match or min(int(match.group(1)), int(match.group(2))) < 2:
        raise UserError(f"--size: {text!r} is not HEIGHTxWIDTH, e.g. 480x720")
    return int(match.group(1)), int(match.group(2))


def options_from(
    family: str = "5b",
    frames: int | None = None,
    fps: float | None = None,
    size: str | None = None,
    crop: str = "center",
    min_seconds: float = 1.0,
    max_clips_per_scene: int | None = None,
) -> SplitOptions:
    """The command's flags as SplitOptions, each checked with a sentence naming the flag."""
    step, native_frames, native_fps = family_options(family)
    if frames is not None and (frames < step + 1 or (frames - 1) % step):
        raise UserError(
            f"--frames: {frames} is not a frame count this family accepts ({step}k+1: "
            f"{step + 1}, {2 * step + 1}, ..., {native_frames})"
        )
    if fps is not None and not 0 < fps <= 120:
        raise UserError(f"--fps: {fps} must be above 0 and at most 120")
    if crop not in ("center", "none"):
        raise UserError(f"--crop: {crop!r} must be center or none")
    if min_seconds < 0:
        raise UserError("--min-seconds: must not be negative")
    if max_clips_per_scene is not None and max_clips_per_scene < 1:
        raise UserError("--max-clips-per-scene: must be at least 1")
    return SplitOptions(
        frame_step=step,
        max_frames=native_frames,
        frames=frames,
        fps=fps or native_fps,
        size=parse_size(size) if size else None,
        crop=crop,
        min_seconds=min_seconds,
        max_clips_per_scene=max_clips_per_scene,
    )


def run_split(args) -> int:
    """`python -m core.data split` with parsed arguments; returns the exit status."""
    from core.data.preparation import run_reported

    def work(reporter, stop):
        options = options_from(
            args.family,
            args.frames,
            args.fps,
            args.size,
            args.crop,
            args.min_seconds,
            args.max_clips_per_scene,
        )
        out = Path(args.out)

        def on_clip(source: str, name: str, done: int, total: int) -> None:
            reporter.item(name, "written")
            reporter.progress(f"writing clips of {source}", done, total)

        def on_scan(source: str, done: int, total: int) -> None:
            reporter.progress(f"finding scenes in {source}", done, total, throttle=True)

        def on_dropped(source: str, reason: str) -> None:
            reporter.item(source, "dropped", reason)

        record = split_sources(
            [Path(path) for path in args.inputs],
            out,
            options,
            SplitProgress(on_scan=on_scan, on_clip=on_clip, on_dropped=on_dropped),
            stop,
        )
        clips = [clip for entry in record.sources for clip in entry.clips if clip.written]
        if not stop.is_set():
            for entry in record.sources:
                for part in entry.dropped:
                    span = f"{time_stamp(part.start)}-{time_stamp(part.end)}"
                    print(f"left out {Path(entry.source).name} {span}: {part.reason}")
            print(f"{len(clips)} clips in {out} (the record: {out / SPLIT_FILE})")
        return len(clips), [str(out)]

    return run_reported("split", args.events, work)
