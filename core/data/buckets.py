"""Resolution buckets: which FxHxW shape a clip trains at, and how its frames are taken.

A clip takes the largest bucket frame count it can fill, then, among the buckets of that frame
count, the one nearest its aspect ratio. Frames are sampled evenly across the clip; each frame is
resized to cover the bucket and center-cropped.
"""

from __future__ import annotations

import math

import numpy as np

Bucket = tuple[int, int, int]  # frames, height, width


def choose_bucket(frames: int, height: int, width: int, buckets: list[Bucket]) -> Bucket | None:
    """The bucket a clip of this shape trains at, or None when it is shorter than every bucket."""
    fitting = [bucket for bucket in buckets if bucket[0] <= frames]
    if not fitting:
        return None
    most_frames = max(bucket[0] for bucket in fitting)
    same_length = [bucket for bucket in fitting if bucket[0] == most_frames]
    aspect = math.log(width / height)
    return min(same_length, key=lambda bucket: abs(math.log(bucket[2] / bucket[1]) - aspect))


def frame_indices(available: int, wanted: int) -> list[int]:
    """`wanted` frame indices spread evenly from the first frame to the last."""
    if wanted == 1:
        return [0]
    return [round(i * (available - 1) / (wanted - 1)) for i in range(wanted)]


def valid_frames_for(frames: int, step: int) -> bool:
    return frames >= 1 and (frames - 1) % step == 0


def to_training_tensor(frames: np.ndarray, height: int, width: int):
    """uint8 frames [F, H, W, 3] -> float tensor [F, 3, height, width] in [-1, 1].

    Resize so the frame covers the target (keeping its aspect), then crop the center.
    """
    import torch
    import torch.nn.functional as F

    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    source_height, source_width = video.shape[-2:]
    scale = max(height / source_height, width / source_width)
    resized = (max(height, round(source_height * scale)), max(width, round(source_width * scale)))
    if resized != (source_height, source_width):
        video = F.interpolate(
            video, size=resized, mode="bilinear", antialias=True, align_corners=False
        )
    top = (resized[0] - height) // 2
    left = (resized[1] - width) // 2
    video = video[:, :, top : top + height, left : left + width]
    return (video / 127.5 - 1.0).clamp(-1.0, 1.0)
