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
