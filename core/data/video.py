"""Reading clips: probe a file's shape and decode only the frames a sample needs.

Decoding goes through the ffmpeg binary that imageio-ffmpeg ships (no system ffmpeg needed).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"})


class UnreadableMedia(Exception):
    """A file that is not a decodable clip or image; the message says why."""


@dataclass(frozen=True)
class MediaInfo:
    frames: int
    height: int
    width: int
    fps: float

    @property
    def duration(self) -> float:
        return self.frames / self.fps if self.fps else 0.0


def is_image(path: str | Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def probe(path: str | Path) -> MediaInfo:
    """Frame count (exact, by decoding), size and frame rate of a clip or image."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableMedia("file not found")
    if path.stat().st_size == 0:
        raise UnreadableMedia("empty file (0 bytes)")
    if is_image(path):
        height, width = _read_image(path).shape[:2]
        return MediaInfo(frames=1, height=height, width=width, fps=0.0)
    import imageio_ffmpeg

    try:
        reader = imageio_ffmpeg.read_frames(str(path))
        meta = next(reader)
        reader.close()
        frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except (RuntimeError, OSError, StopIteration) as error:
        raise UnreadableMedia(f"not a readable video ({_first_line(error)})") from None
    width, height = meta["size"]
    if frames < 1:
        raise UnreadableMedia("the video has no frames")
    return MediaInfo(
        frames=int(frames), height=int(height), width=int(width), fps=float(meta.get("fps") or 0.0)
    )


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """The frames at `indices` (sorted, may repeat) as uint8 [len(indices), H, W, 3].

    Decoding stops after the last wanted frame, so a long clip sampled near its start is cheap.
    """
    path = Path(path)
    if is_image(path):
        image = _read_image(path)
        return np.repeat(image[None], len(indices), axis=0)
    import imageio_ffmpeg

    wanted = sorted(set(indices))
    last = wanted[-1]
    kept: dict[int, np.ndarray] = {}
    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
        width, height = meta["size"]
        for index, raw in enumerate(reader):
            if index in wanted:
                kept[index] = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            if index >= last:
                break
    except (RuntimeError, OSError) as error:
        raise UnreadableMedia(f"decoding failed ({_first_line(error)})") from None
    finally:
        reader.close()
    missing = [index for index in wanted if index not in kept]
    if missing:
        raise UnreadableMedia(f"the video ended before frame {missing[0]}")
    return np.stack([kept[index] for index in indices])


def _read_image(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        image = iio.imread(path)
    except Exception as error:  # imageio raises per-plugin types; all mean "not an image"
        raise UnreadableMedia(f"not a readable image ({_first_line(error)})") from None
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return np.ascontiguousarray(image[..., :3])


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write frames (uint8 [F, H, W, 3], or float in [0, 1]) as an H.264 mp4, atomically."""
    import imageio_ffmpeg

    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(temporary),
        (width, height),
        fps=fps,
        macro_block_size=1,
        output_params=["-crf", "18"],
        ffmpeg_log_level="error",
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()
    temporary.replace(path)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:160] if text else type(error).__name__
