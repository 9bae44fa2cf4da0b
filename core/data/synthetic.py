"""Generated clips for tests, the demo and benchmarks: nothing is ever downloaded.

Each clip is a coloured square moving over a gradient, different per seed, written as H.264 mp4.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.video import write_video


def synthetic_frames(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """uint8 [frames, height, width, 3]: a square crossing a gradient background."""
    rng = np.random.default_rng(seed)
    colour = rng.integers(64, 256, size=3)
    ys = np.linspace(0, 1, height)[:, None]
    xs = np.linspace(0, 1, width)[None, :]
    background = np.stack([ys * 255 * (seed % 3 == c) + xs * 80 for c in range(3)], axis=-1)
    side = max(2, min(height, width) // 3)
    video = np.empty((frames, height, width, 3), dtype=np.uint8)
    for index in range(frames):
        frame = background.copy()
        progress = index / max(1, frames - 1)
        top = int(progress * (height - side))
        left = int((1 - progress) * (width - side)) if seed % 2 else int(progress * (width - side))
        frame[top : top + side, left : left + side] = colour
        video[index] = np.clip(frame, 0, 255).astype(np.uint8)
    return video


def write_clip(
    path: str | Path,
    frames: int = 9,
    height: int = 32,
    width: int = 32,
    seed: int = 0,
    fps: int = 8,
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, synthetic_frames(frames, height, width, seed), fps=fps)
    return path


def make_reference_dataset(
    root: str | Path,
    count: int = 4,
    frames: int = 9,
    height: int = 32,
    width: int = 32,
    captions: list[str] | None = None,
) -> Path:
    """A dataset in the reference layout: videos/NN.mp4, videos.txt and prompt.txt."""
    root = Path(root)
    captions = captions or [f"a square moving across the frame, clip {i}" for i in range(count)]
    paths = []
    for index in range(count):
        relative = f"videos/{index:02d}.mp4"
        write_clip(root / relative, frames, height, width, seed=index)
        paths.append(relative)
    (root / "videos.txt").write_text("\n".join(paths) + "\n", encoding="utf-8")
    (root / "prompt.txt").write_text("\n".join(captions[:count]) + "\n", encoding="utf-8")
    return root


# A long video with known structure, for the scene split's tests and benchmark: each scene has a
# background of its own hue (so a frame's scene can be told from its colours) crossed by a moving
# textured square, on a slowly panning gradient (so the picture is never still inside a scene).
LONG_VIDEO_HUES = ((220, 60, 50), (50, 190, 70), (60, 80, 220), (220, 200, 40), (200, 60, 200))


def long_video_layout(fps: int = 24) -> list[tuple[str, int, int]]:
    """(what, first frame, end frame) of `write_long_video`'s parts: scenes 0-4 joined by three
    hard cuts and one fade through black, and a frozen picture inside scene 4."""
    parts = [
        ("scene 0", 4.0),
        ("scene 1", 4.0),
        ("scene 2", 3.0),
        ("scene 3", 4.0),
        ("fade", 2.0),  # scene 3 fades to black over 1 s, scene 4 fades in from it over 1 s
        ("scene 4", 3.0),
        ("static", 3.0),  # scene 4's picture frozen
        ("scene 4", 3.0),
    ]
    layout, start = [], 0
    for what, seconds in parts:
        end = start + round(seconds * fps)
        layout.append((what, start, end))
        start = end
    return layout


def _scene_frame(scene: int, time: float, height: int, width: int) -> np.ndarray:
    hue = np.array(LONG_VIDEO_HUES[scene], dtype=np.float32)
    xs = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    ys = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    shade = 0.75 + 0.25 * np.sin(2 * np.pi * (xs + 0.5 * ys + 0.15 * time))  # the slow pan
    frame = shade[..., None] * hue
    side = max(4, min(height, width) // 4)
    top = int((0.5 + 0.4 * np.sin(1.3 * time + scene)) * (height - side))
    left = int((0.5 + 0.4 * np.cos(0.9 * time + 2 * scene)) * (width - side))
    checker = (np.indices((side, side)).sum(axis=0) // 2 % 2)[..., None]
    frame[top : top + side, left : left + side] = 90 + 140 * checker
    return np.clip(frame, 0, 255).astype(np.uint8)


def long_video_frames(
    height: int = 96, width: int = 160, fps: int = 24, dissolve: bool = False
) -> np.ndarray:
    """uint8 [frames, height, width, 3] of the layout `long_video_layout(fps)` describes.

    `dissolve` replaces the fade through black with a cross-dissolve from scene 3 to scene 4.
    """
    layout = long_video_layout(fps)
    frames = []
    frozen = None
    for what, start, end in layout:
        for index in range(start, end):
            time = index / fps
            if what.startswith("scene"):
                frame = _scene_frame(int(what.split()[1]), time, height, width)
                frozen = frame
            elif what == "static":
                frame = frozen
            elif dissolve:
                mix = (index - start + 1) / (end - start + 1)
                frame = _scene_frame(3, time, height, width) * (1 - mix)
                frame = (frame + _scene_frame(4, time, height, width) * mix).astype(np.uint8)
            else:  # the fade: out of scene 3, through black, into scene 4
                half = (end - start) // 2
                position = index - start
                if position < half:
                    frame = _scene_frame(3, time, height, width) * (1 - (position + 1) / half)
                else:
                    frame = _scene_frame(4, time, height, width) * ((position - half + 1) / half)
                frame = frame.astype(np.uint8)
            frames.append(frame)
    return np.stack(frames)


def write_long_video(
    path: str | Path, height: int = 96, width: int = 160, fps: int = 24
) -> list[tuple[str, int, int]]:
    """Write the generated long video; returns its layout (what, first frame, end frame)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, long_video_frames(height, width, fps), fps=fps)
    return long_video_layout(fps)


def scene_of(frame: np.ndarray) -> int | None:
    """Which of the long video's scenes a frame shows, by its colour; None for a dark frame."""
    mean = frame.reshape(-1, 3).astype(np.float32).mean(axis=0)
    if mean.max() < 30:
        return None
    direction = mean / np.linalg.norm(mean)
    hues = np.array(LONG_VIDEO_HUES, dtype=np.float32)
    hues /= np.linalg.norm(hues, axis=1, keepdims=True)
    return int(np.argmax(hues @ direction))
