"""From a dataset folder (or zip) to training samples and per-epoch batches.

`prepare_samples` finds the (file, caption) pairs, probes every file, drops duplicates and gives
each sample a bucket, keeping a reason for every file it skips. `epoch_batches` gives the
deterministic batch order of one epoch (one bucket per batch), so a resumed run sees exactly the
batches the uninterrupted run would have. Nothing here imports torch at module level: the web
process builds dataset reports with it.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path

from core.data.buckets import Bucket, choose_bucket, frame_indices
from core.data.digest import DigestMemo
from core.data.discover import RawSample, Skipped, discover
from core.data.video import MediaInfo, UnreadableMedia, is_image, probe, read_frames
from core.errors import UserError


@dataclass(frozen=True)
class Sample:
    path: Path
    caption: str
    bucket: Bucket
    indices: tuple[int, ...]
    info: MediaInfo
    digest: str
    source: str
    image: Path | None = None  # image-to-video: the image it starts from (None: its frame 0)
    image_digest: str | None = None


@dataclass
class PreparedSamples:
    root: Path
    layout: str
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def relative_name(path: Path, root: Path) -> str:
    """A file's name relative to the dataset folder, for reports."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def clean_caption(caption: str, id_token: str | None) -> str:
    """Whitespace collapsed, and the trigger word in front when one is set (once: a caption
    that already starts with it keeps it as it is)."""
    text = " ".join(caption.split())
    token = " ".join((id_token or "").split())
    if token and text and not (text == token or text.startswith(f"{token} ")):
        text = f"{token} {text}"
    return text


def image_buckets(buckets: list[Bucket]) -> list[Bucket]:
    """Images train as one-frame samples at the resolutions of the video buckets."""
    return sorted({(1, height, width) for _, height, width in buckets})


def assign(
    raw: list[RawSample],
    buckets: list[Bucket],
    id_token: str | None,
    memo: DigestMemo,
    image_to_video: bool = False,
) -> tuple[list[Sample], list[Skipped]]:
    """Probe each file and give it a bucket; unusable files are skipped with a reason.

    For an image-to-video model, images alone are no samples (a still shows no motion to
    learn), and a clip whose named image can't be read is skipped with that reason.
    """
    samples: list[Sample] = []
    skipped: list[Skipped] = []
    seen: dict[str, Path] = {}
    shortest = min(bucket[0] for bucket in buckets)
    for item in raw:
        caption = clean_caption(item.caption, None)
        if not caption:
            skipped.append(Skipped(item.path, "empty caption"))
            continue
        if image_to_video and is_image(item.path):
            skipped.append(Skipped(item.path, "an image alone: image-to-video trains on clips"))
            continue
        try:
            info = probe(item.path)
        except UnreadableMedia as error:
            skipped.append(Skipped(item.path, f"unreadable: {error}"))
            continue
        image_digest = None
        if item.image is not None:
            try:
                probe(item.image)
            except UnreadableMedia as error:
                skipped.append(Skipped(item.path, f"its image {item.image.name}: {error}"))
                continue
            image_digest = memo.digest(item.image)
        digest = memo.digest(item.path)
        if digest in seen:
            skipped.append(Skipped(item.path, f"duplicate content of {seen[digest].name}"))
            continue
        seen[digest] = item.path
        choices = image_buckets(buckets) if is_image(item.path) else buckets
        bucket = choose_bucket(info.frames, info.height, info.width, choices)
        if bucket is None:
            skipped.append(
                Skipped(
                    item.path,
                    f"too short: {info.frames} frames, and the shortest bucket needs {shortest}",
                )
            )
            continue
        samples.append(
            Sample(
                path=item.path,
                caption=clean_caption(caption, id_token),
                bucket=bucket,
                indices=tuple(frame_indices(info.frames, bucket[0])),
                info=info,
                digest=digest,
                source=item.source,
                image=item.image,
                image_digest=image_digest,
            )
        )
    return samples, skipped


def dataset_root(data_root: str, cache_dir: Path) -> Path:
    """The folder to read: --data_root itself, or a zip's contents extracted into the cache."""
    if not data_root:
        raise UserError("--data_root is missing: name the folder that holds your clips")
    root = Path(data_root).expanduser()
    if root.is_file() and root.suffix.lower() == ".zip":
        from core.data.archive import open_dataset_zip

        return open_dataset_zip(root, cache_dir)
    if not root.is_dir():
        raise UserError(f"--data_root: the folder {root} does not exist")
    return root


def prepare_samples(
    config, require_samples: bool = True, image_to_video: bool = False
) -> PreparedSamples:
    """The samples a run of `config` (a TrainConfig) trains on, and what it skips and why.

    With `require_samples`, a dataset with nothing usable is a UserError naming the first
    reason; the report passes False to describe such a folder instead. `image_to_video`: the
    base model starts each clip from an image (see `assign`).
    """
    cache_dir = config.cache_path
    root = dataset_root(config.data_root, cache_dir)
    found = discover(
        root,
        config.dataset_layout,
        config.caption_column,
        config.video_column,
        config.image_column,
    )
    memo = DigestMemo(cache_dir)
    samples, skipped = assign(found.samples, config.buckets, config.id_token, memo, image_to_video)
    with contextlib.suppress(OSError):  # an unwritable cache only costs re-hashing next time
        memo.save()
    prepared = PreparedSamples(
        root=root, layout=found.layout, samples=samples, skipped=found.skipped + skipped
    )
    if require_samples and not samples:
        if not found.samples and not found.skipped:
            raise UserError(
                f"--data_root: the dataset in {root} is empty (no clips or images "
                f"with captions found in the {found.layout} layout)"
            )
        first = prepared.skipped[0]
        shapes = " ".join(config.video_resolution_buckets)
        raise UserError(
            f"--data_root: nothing in {root} can be trained on with buckets {shapes}; "
            f"{len(prepared.skipped)} files skipped, the first, {first.path.name}: {first.reason}"
        )
    return prepared


def load_clip(sample: Sample):
    """The sample's frames as a float tensor [F, 3, H, W] in [-1, 1], at its bucket's shape."""
    from core.data.buckets import to_training_tensor

    frames = read_frames(sample.path, list(sample.indices))
    _, height, width = sample.bucket
    return to_training_tensor(frames, height, width)


def load_condition_image(path: str | Path, height: int, width: int):
    """An image file (or a clip's first frame) as a float tensor [3, H, W] in [-1, 1], resized
    to cover HxW and center-cropped exactly as training frames are."""
    from core.data.buckets import to_training_tensor

    try:
        frame = read_frames(path, [0])
    except UnreadableMedia as error:
        raise UserError(f"the image {path} can't be read ({error})") from None
    return to_training_tensor(frame, height, width)[0]


def to_pil(image):
    """A [3, H, W] tensor in [-1, 1] as an RGB PIL image (what an I2V pipeline is given)."""
    import torch
    from PIL import Image

    pixels = ((image.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


def sample_image(sample: Sample, height: int | None = None, width: int | None = None):
    """The image an image-to-video sample starts from, [3, H, W] (default: its bucket's size)."""
    _, bucket_height, bucket_width = sample.bucket
    return load_condition_image(
        sample.image or sample.path, height or bucket_height, width or bucket_width
    )


def describe_image(sample: Sample, root: Path) -> str:
    """Which image a clip starts from, for reports: its file, or "first frame"."""
    return relative_name(sample.image, root) if sample.image else "first frame"


class ClipDataset:
    """Map-style dataset (torch DataLoader compatible) of decoded clips (and, for an
    image-to-video model, the image each starts from)."""

    def __init__(self, samples: list[Sample], images: bool = False):
        self.samples = samples
        self.images = images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        sample = self.samples[index]
        item = {"index": index, "video": load_clip(sample)}
        if self.images:
            # The first frame of the clip as trained (after the resize and crop), or the
            # dataset's own image, made the same way.
            item["image"] = sample_image(sample) if sample.image else item["video"][0]
        return item


def epoch_batches(
    samples: list[Sample],
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """This rank's batches of one epoch: sample indices, one bucket per batch, seeded order.

    The epoch is cut into global batches of batch_size x world_size samples (one bucket each),
    and rank r trains the r-th slice of each, so N processes with batch b see exactly the
    samples one process with batch N*b would. Every rank computes the same order.
    """
    rng = random.Random(f"{seed}-{epoch}")
    size = batch_size * world_size
    by_bucket: dict[Bucket, list[int]] = {}
    for index, sample in enumerate(samples):
        by_bucket.setdefault(sample.bucket, []).append(index)
    batches = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        chunks = [indices[i : i + size] for i in range(0, len(indices), size)]
        if world_size > 1:  # every rank needs a full share: pad a short chunk by repeating it
            chunks = [(chunk * size)[:size] for chunk in chunks]
        batches += chunks
    rng.shuffle(batches)
    return [batch[rank * batch_size : (rank + 1) * batch_size] for batch in batches]
