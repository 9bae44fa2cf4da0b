"""Reading and writing clips with PyAV: probe a file's shape, decode only the frames needed.

PyAV was chosen by measurement (bench/decode_speed.py): on the same generated 480x720 H.264 clips
it decodes 1.2-1.6x the frames per second of imageio-ffmpeg's pipe, and it reads a clip's frame
count from the container in ~3 ms where imageio-ffmpeg decodes the whole clip (~60 ms), which
matters because the dataset report probes every file. Images are read with Pillow. Nothing here
imports torch: the dataset report runs in the web process.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"})
MEDIA_SUFFIXES = IMAGE_SUFFIXES | VIDEO_SUFFIXES


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


def is_media(path: str | Path) -> bool:
    return Path(path).suffix.lower() in MEDIA_SUFFIXES


def probe(path: str | Path) -> MediaInfo:
    """Frame count, size and frame rate of a clip (from the container) or an image."""
    path = Path(path)
    if not path.is_file():
        raise UnreadableMedia("file not found")
    if path.stat().st_size == 0:
        raise UnreadableMedia("empty file (0 bytes)")
    if is_image(path):
        height, width = _read_image(path).shape[:2]
        return MediaInfo(frames=1, height=height, width=width, fps=0.0)
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UnreadableMedia("the file has no video stream")
            stream = container.streams.video[0]
            frames = stream.frames
            if not frames:  # webm and mkv carry no count: count packets, no decoding needed
                frames = sum(1 for packet in container.demux(stream) if packet.size)
            fps = float(stream.average_rate or stream.guessed_rate or 0)
            info = MediaInfo(frames=int(frames), height=stream.height, width=stream.width, fps=fps)
    except (av.FFmpegError, OSError, ValueError) as error:
        raise UnreadableMedia(f"not a readable video ({_first_line(error)})") from None
    if info.frames < 1 or not info.height or not info.width:
        raise UnreadableMedia("the video has no frames")
    return info


def read_frames(path: str | Path, indices: list[int]) -> np.ndarray:
    """The frames at `indices` (may repeat) as uint8 [len(indices), H, W, 3].

    Decoding stops after the last wanted frame, so a long clip sampled near its start is cheap.
    """
    path = Path(path)
    if is_image(path):
        image = _read_image(path)
        return np.repeat(image[None], len(indices), axis=0)
    import av

    wanted = set(indices)
    last = max(indices)
    kept: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for index, frame in enumerate(container.decode(stream)):
                if index in wanted:
                    kept[index] = frame.to_ndarray(format="rgb24")
                if index >= last:
                    break
    except (av.FFmpegError, OSError, ValueError) as error:
        raise UnreadableMedia(f"decoding failed ({_first_line(error)})") from None
    missing = sorted(wanted - kept.keys())
    if missing:
        raise UnreadableMedia(f"the video ended before frame {missing[0]}")
    return np.stack([kept[index] for index in indices])


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise UnreadableMedia(f"not a readable image ({_first_line(error)})") from None


def write_video(path: str | Path, frames: np.ndarray, fps: int = 8) -> None:
    """Write frames (uint8 [F, H, W, 3], or float in [0, 1]) as an H.264 mp4, atomically."""
    import av

    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255).round().astype(np.uint8)
    path = Path(path)
    temporary = path.with_name(f".{path.stem}.partial{path.suffix}")
    height, width = frames.shape[1:3]
    with av.open(str(temporary), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = width, height
        # yuv444 keeps odd sizes and small colour detail; browsers play yuv420p only, so use it
        # whenever the size allows.
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        stream.options = {"crf": "18"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    temporary.replace(path)


def _first_line(error: BaseException) -> str:
    if getattr(error, "strerror", None):  # FFmpeg and OS errors: the reason without the path
        return str(error.strerror)
    text = str(error).strip().splitlines()
    return text[-1][:160] if text else type(error).__name__
