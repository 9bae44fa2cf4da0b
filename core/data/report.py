"""The dataset report: what a run will train on, and every file it skips with the reason.

The trainer, the `python -m core.data report` command and the UI all build the same report from
the same code (`prepare_samples`), so what the page promises is what the trainer does. Torch-free.
"""

from __future__ import annotations

import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field

from core.data.caption_origin import MODEL, CaptionRecord
from core.data.dataset import PreparedSamples, describe_image, prepare_samples, relative_name
from core.data.video import is_image

MAX_TEXT_TOKENS = 226


@dataclass
class Spread:
    min: float
    median: float
    max: float

    @classmethod
    def of(cls, values: list[float]) -> Spread | None:
        if not values:
            return None
        return cls(min(values), statistics.median(values), max(values))


@dataclass
class SampleRow:
    file: str
    caption: str
    bucket: str
    frames: int
    resolution: str
    duration: float
    caption_tokens: int | None = None
    caption_by: str | None = None  # "model", "edited" (a person changed the model's) or "person"
    image: str = ""  # a clip's image for image-to-video models: its file, or "first frame"


@dataclass
class SkippedRow:
    file: str
    reason: str


@dataclass
class DatasetReport:
    root: str
    layout: str
    buckets: dict[str, int]
    samples: list[SampleRow]
    skipped: list[SkippedRow]
    videos: int
    images: int
    total_frames: int
    frames: Spread | None
    duration_seconds: Spread | None
    resolutions: dict[str, int]
    long_captions: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def build_report(config, tokenizer=None, image_to_video: bool = False) -> DatasetReport:
    """The report for a TrainConfig's dataset settings (a tokenizer adds caption lengths); for
    an image-to-video model, images alone are reported skipped, as its run skips them."""
    prepared: PreparedSamples = prepare_samples(
        config, require_samples=False, image_to_video=image_to_video
    )
    root = prepared.root
    origins = CaptionRecord(root)
    rows, long_captions = [], []
    for sample in prepared.samples:
        tokens = None
        if tokenizer is not None:
            tokens = len(tokenizer(sample.caption, add_special_tokens=True).input_ids)
            if tokens > MAX_TEXT_TOKENS:
                long_captions.append(relative_name(sample.path, root))
        frames, height, width = sample.bucket
        name = relative_name(sample.path, root)
        rows.append(
            SampleRow(
                file=name,
                caption=sample.caption,
                bucket=f"{frames}x{height}x{width}",
                frames=sample.info.frames,
                resolution=f"{sample.info.width}x{sample.info.height}",
                duration=round(sample.info.duration, 3),
                caption_tokens=tokens,
                image="" if is_image(sample.path) else describe_image(sample, root),
                caption_by=origins.origin(name, sample.caption),
            )
        )
    videos = [s for s in prepared.samples if not is_image(s.path)]
    return DatasetReport(
        root=str(root),
        layout=prepared.layout,
        buckets=dict(sorted(Counter(row.bucket for row in rows).items())),
        samples=rows,
        skipped=[SkippedRow(relative_name(s.path, root), s.reason) for s in prepared.skipped],
        videos=len(videos),
        images=len(prepared.samples) - len(videos),
        total_frames=sum(sample.bucket[0] for sample in prepared.samples),
        frames=Spread.of([s.info.frames for s in videos]),
        duration_seconds=Spread.of([round(s.info.duration, 3) for s in videos]),
        resolutions=dict(Counter(row.resolution for row in rows).most_common()),
        long_captions=long_captions,
    )


def format_report(report: DatasetReport) -> str:
    """The report as text for a terminal."""
    lines = [
        f"Dataset {report.root} ({report.layout} layout)",
        f"  {len(report.samples)} samples will be trained on: {report.videos} clips, "
        f"{report.images} images, {report.total_frames} frames in all",
    ]
    for bucket, count in report.buckets.items():
        lines.append(f"    {bucket:>14}: {count}")
    if report.frames:
        f, d = report.frames, report.duration_seconds
        lines.append(
            f"  frames per clip: {f.min:g} / {f.median:g} / {f.max:g} (min / median / "
            f"max); seconds: {d.min:g} / {d.median:g} / {d.max:g}"
        )
    if report.resolutions:
        shown = ", ".join(f"{res} x{n}" for res, n in list(report.resolutions.items())[:6])
        lines.append(f"  resolutions: {shown}")
    named = [row for row in report.samples if row.image and row.image != "first frame"]
    if report.videos:
        lines.append(
            f"  image-to-video starts {len(named)} clips from their own image and "
            f"{report.videos - len(named)} from their first frame"
        )
        lines += [f"    {row.file}: {row.image}" for row in named[:20]]
    by_model = sum(row.caption_by == MODEL for row in report.samples)
    if by_model:
        lines.append(
            f"  captions: {by_model} written by the model, {len(report.samples) - by_model} by a "
            "person (--json names each clip's)"
        )
    if report.long_captions:
        lines.append(
            f"  {len(report.long_captions)} captions are longer than the text "
            f"encoder's {MAX_TEXT_TOKENS} tokens; it reads only their start:"
        )
        lines += [f"    {name}" for name in report.long_captions]
    if report.skipped:
        lines.append(f"  {len(report.skipped)} files skipped:")
        lines += [f"    {row.file}: {row.reason}" for row in report.skipped]
    else:
        lines.append("  nothing skipped")
    return "\n".join(lines)
