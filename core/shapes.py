"""Clip shapes as CogVideoX takes them: FxHxW buckets, 4k+1 frames, sides in multiples of 16.

Torch-free: the trainer's settings, preview requests and the web page share these rules.
"""

from __future__ import annotations

import re

# CogVideoX's VAE compresses space 8x and the transformer patches 2x2, so sides are multiples of 16.
SPATIAL_MULTIPLE = 16
# The VAE compresses time 4x and keeps the first frame: clips have 4k+1 frames.
TEMPORAL_COMPRESSION = 4

_BUCKET = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def nearest_valid_frames(frames: int, step: int = TEMPORAL_COMPRESSION) -> list[int]:
    """The frame counts of the form step*k+1 that lie nearest to `frames` (one or two values)."""
    below = ((frames - 1) // step) * step + 1
    above = below + step
    candidates = [value for value in (below, above) if value >= 1]
    best = min(abs(value - frames) for value in candidates)
    return [value for value in candidates if abs(value - frames) == best]


def nearest_multiples(value: int, multiple: int = SPATIAL_MULTIPLE) -> list[int]:
    """The multiples of `multiple` nearest to `value` (one or two values)."""
    below = max(multiple, (value // multiple) * multiple)
    above = below + multiple
    best = min(abs(below - value), abs(above - value))
    return [m for m in (below, above) if abs(m - value) == best]


def parse_bucket(text: str) -> tuple[int, int, int]:
    """`"49x480x720"` -> `(49, 480, 720)`, or ValueError with a sentence saying what is wrong."""
    match = _BUCKET.match(str(text))
    if not match:
        raise ValueError(f"'{text}' is not FxHxW (frames x height x width), for example 49x480x720")
    frames, height, width = (int(group) for group in match.groups())
    if frames < 1 or (frames - 1) % TEMPORAL_COMPRESSION:
        nearest = " or ".join(str(v) for v in nearest_valid_frames(max(frames, 1)))
        raise ValueError(
            f"'{text}' has {frames} frames, but CogVideoX needs 4k+1 frames; "
            f"the nearest are {nearest}"
        )
    for side, name in ((height, "height"), (width, "width")):
        if side < SPATIAL_MULTIPLE or side % SPATIAL_MULTIPLE:
            nearest = " or ".join(str(v) for v in nearest_multiples(side))
            raise ValueError(
                f"'{text}' has {name} {side}, which must be a multiple of {SPATIAL_MULTIPLE}; "
                f"the nearest are {nearest}"
            )
    return frames, height, width


def normalize_bucket(text: str) -> str:
    frames, height, width = parse_bucket(text)
    return f"{frames}x{height}x{width}"
