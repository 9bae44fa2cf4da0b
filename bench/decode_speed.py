"""Decode speed of the chosen decoder (PyAV) beside imageio-ffmpeg, on the same generated clips.

Both decoders read every frame of the same H.264 clips to RGB arrays, alternating rounds; the
probe (frame count, size, fps) is timed too, since the dataset report probes every clip.

    python bench/decode_speed.py [--clips 4] [--frames 97] [--size 480x720] [--rounds 3]

Last line: `decode_speed: <PyAV frames/s / imageio-ffmpeg frames/s>`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def decode_pyav(path: Path) -> int:
    from core.data.video import probe, read_frames

    return len(read_frames(path, list(range(probe(path).frames))))


def decode_imageio_ffmpeg(path: Path) -> int:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    width, height = next(reader)["size"]
    return len([np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in reader])


def probe_pyav(path: Path) -> int:
    from core.data.video import probe

    return probe(path).frames


def probe_imageio_ffmpeg(path: Path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def rate(function, paths: list[Path]) -> float:
    started = time.perf_counter()
    frames = sum(function(path) for path in paths)
    return frames / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--frames", type=int, default=97)
    parser.add_argument("--size", default="480x720")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))

    from core.data.synthetic import write_clip

    with tempfile.TemporaryDirectory() as tmp:
        paths = [
            write_clip(Path(tmp) / f"{i}.mp4", args.frames, height, width, seed=i, fps=24)
            for i in range(args.clips)
        ]
        results: dict[str, list[float]] = {
            name: [] for name in ("pyav", "imageio-ffmpeg", "pyav probe", "imageio-ffmpeg probe")
        }
        for _ in range(args.rounds):
            results["pyav"].append(rate(decode_pyav, paths))
            results["imageio-ffmpeg"].append(rate(decode_imageio_ffmpeg, paths))
            started = time.perf_counter()
            for path in paths:
                probe_pyav(path)
            results["pyav probe"].append((time.perf_counter() - started) / len(paths))
            started = time.perf_counter()
            for path in paths:
                probe_imageio_ffmpeg(path)
            results["imageio-ffmpeg probe"].append((time.perf_counter() - started) / len(paths))
    pyav, ffmpeg = statistics.median(results["pyav"]), statistics.median(results["imageio-ffmpeg"])
    print(
        f"{args.clips} clips of {args.frames} frames at {width}x{height}, "
        f"median of {args.rounds} rounds"
    )
    print(f"decode  PyAV:           {pyav:8.0f} frames/s")
    print(f"decode  imageio-ffmpeg: {ffmpeg:8.0f} frames/s")
    print(f"probe   PyAV:           {statistics.median(results['pyav probe']) * 1000:8.1f} ms/clip")
    print(
        f"probe   imageio-ffmpeg: "
        f"{statistics.median(results['imageio-ffmpeg probe']) * 1000:8.1f} ms/clip"
    )
    print(f"decode_speed: {pyav / ffmpeg:.2f}")


if __name__ == "__main__":
    main()
