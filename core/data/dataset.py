"""From a dataset folder to training samples and per-epoch batches.

`prepare_samples` reads the layout, probes every clip and assigns it a bucket, keeping a reason
for every file it skips. `epoch_batches` gives the deterministic batch order of one epoch (one
bucket per batch), so a resumed run sees exactly the batches the uninterrupted run would have.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from core.data.buckets import Bucket, choose_bucket, frame_indices, to_training_tensor
from core.data.reference import RawSample, read_reference_layout
from core.data.video import MediaInfo, UnreadableMedia, probe, read_frames
from core.errors import UserError


@dataclass(frozen=True)
class Sample:
    path: Path
    caption: str
    bucket: Bucket
    indices: tuple[int, ...]
    info: MediaInfo


@dataclass(frozen=True)
class Skipped:
    path: Path
    reason: str


@dataclass
class PreparedSamples:
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


def clean_caption(caption: str, id_token: str | None) -> str:
    """Whitespace collapsed, and the trigger word in front when one is set."""
    text = " ".join(caption.split())
    if id_token:
        text = f"{id_token} {text}".strip()
    return text


def assign(raw: list[RawSample], buckets: list[Bucket], id_token: str | None) -> PreparedSamples:
    """Probe each file and give it a bucket; unusable files are skipped with a reason."""
    prepared = PreparedSamples()
    for item in raw:
        if not item.caption.strip():
            prepared.skipped.append(Skipped(item.path, "empty caption"))
            continue
        try:
            info = probe(item.path)
        except UnreadableMedia as error:
            prepared.skipped.append(Skipped(item.path, str(error)))
            continue
        bucket = choose_bucket(info.frames, info.height, info.width, buckets)
        if bucket is None:
            shortest = min(b[0] for b in buckets)
            prepared.skipped.append(
                Skipped(
                    item.path,
                    f"too short: {info.frames} frames, and the shortest bucket needs {shortest}",
                )
            )
            continue
        prepared.samples.append(
            Sample(
                path=item.path,
                caption=clean_caption(item.caption, id_token),
                bucket=bucket,
                indices=tuple(frame_indices(info.frames, bucket[0])),
                info=info,
            )
        )
    return prepared


def prepare_samples(
    data_root: str,
    caption_column: str,
    video_column: str,
    buckets: list[Bucket],
    id_token: str | None,
) -> PreparedSamples:
    """The samples a run trains on; a UserError when there are none, naming the first reason."""
    if not data_root:
        raise UserError("--data_root is missing: name the folder that holds your clips")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"--data_root: the folder {root} does not exist")
    raw = read_reference_layout(root, caption_column, video_column)
    if not raw:
        raise UserError(
            f"--data_root: the dataset in {root} is empty ({caption_column} and {video_column} "
            "list no clips)"
        )
    prepared = assign(raw, buckets, id_token)
    if not prepared.samples:
        first = prepared.skipped[0]
        shapes = " ".join(f"{f}x{h}x{w}" for f, h, w in buckets)
        raise UserError(
            f"--data_root: none of the {len(raw)} files in {root} can be trained on with buckets "
            f"{shapes}; {first.path.name}: {first.reason}"
        )
    return prepared


def load_clip(sample: Sample):
    """The sample's frames as a float tensor [F, 3, H, W] in [-1, 1], at its bucket's shape."""
    frames = read_frames(sample.path, list(sample.indices))
    _, height, width = sample.bucket
    return to_training_tensor(frames, height, width)


class ClipDataset:
    """Map-style dataset (torch DataLoader compatible) of decoded clips and their captions."""

    def __init__(self, samples: list[Sample]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "video": load_clip(self.samples[index])}


def epoch_batches(
    samples: list[Sample],
    batch_size: int,
    seed: int,
    epoch: int,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """This rank's batches of one epoch: sample indices, one bucket per batch, seeded order.

    Every rank computes the same global order and takes every world_size-th batch, trimmed to a
    common count so all ranks step together.
    """
    rng = random.Random(f"{seed}-{epoch}")
    by_bucket: dict[Bucket, list[int]] = {}
    for index, sample in enumerate(samples):
        by_bucket.setdefault(sample.bucket, []).append(index)
    batches = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        batches += [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    per_rank = max(1, len(batches) // world_size)
    mine = batches[rank::world_size]
    if len(mine) < per_rank:  # fewer batches than ranks: ranks share, still in step
        mine = (mine or batches[:1]) * per_rank
    return mine[:per_rank]
