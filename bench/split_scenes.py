"""Scene detectors and thresholds on generated long videos, and the split's throughput.

The generated video (core/data/synthetic.py `write_long_video`) has five scenes joined by three
hard cuts and a 2 s fade through black, and a 3 s frozen picture inside the last scene; a second
video replaces the fade with a cross-dissolve. For each PySceneDetect detector setting the bench
counts the true boundaries found (a cut within 2 frames, the fade or dissolve anywhere inside
it) and the false cuts inside scenes, and measures the motion meter's values inside the frozen
stretch against the stillest moving frame. Then it times the whole split (scan, resize, encode)
of the 480x720 video, in seconds of source a second, on this machine's cores.

    python bench/split_scenes.py [--size 480x720] [--rounds 2]

Last line: `split throughput: <seconds of source per second>`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def detector_settings() -> dict[str, callable]:
    from scenedetect import (
        AdaptiveDetector,
        ContentDetector,
        HashDetector,
        HistogramDetector,
        ThresholdDetector,
    )

    return {
        "content 15": lambda: [ContentDetector(threshold=15)],
        "content 27 (default)": lambda: [ContentDetector(threshold=27)],
        "content 40": lambda: [ContentDetector(threshold=40)],
        "adaptive 3.0 (default)": lambda: [AdaptiveDetector()],
        "histogram 0.20 (default)": lambda: [HistogramDetector()],
        "hash 0.35 (default)": lambda: [HashDetector()],
        "threshold 12 (fades only)": lambda: [ThresholdDetector(threshold=12)],
        "content 27 + threshold 12 (chosen)": None,  # core.data.scenes.default_detectors
    }


def score(cuts: list[int], layout: list[tuple[str, int, int]]) -> tuple[int, int, int]:
    """(true boundaries found, of how many, false cuts inside scenes)."""
    boundaries = []  # (first acceptable frame, last acceptable frame)
    for (what, start, end), (before, _, _) in zip(layout[1:], layout[:-1], strict=True):
        if what.startswith("scene") and before.startswith("scene"):
            if what != before:
                boundaries.append((start - 2, start + 2))  # a hard cut
        elif what == "fade":
            boundaries.append((start, end))
    found = sum(any(lo <= cut <= hi for cut in cuts) for lo, hi in boundaries)
    # A cut where the frozen picture starts or ends is no error: the still stretch is left out.
    allowed = [(lo, hi) for lo, hi in boundaries]
    allowed += [(start - 2, start + 2) for what, start, _ in layout if what == "static"]
    allowed += [(end - 2, end + 2) for what, _, end in layout if what == "static"]
    false = sum(not any(lo <= cut <= hi for lo, hi in allowed) for cut in cuts)
    return found, len(boundaries), false


def still_margin(scan, layout) -> tuple[float, float]:
    """(largest motion inside the frozen stretch, smallest motion inside a moving scene)."""
    frozen = [scan.motion[i] for what, a, b in layout if what == "static" for i in range(a + 1, b)]
    moving = [
        scan.motion[i] for what, a, b in layout if what.startswith("scene") for i in range(a + 1, b)
    ]
    return max(frozen), min(moving)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="480x720")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    height, width = (int(v) for v in args.size.split("x"))

    from core.data.scenes import scan_video
    from core.data.split import options_from, split_sources
    from core.data.synthetic import long_video_frames, long_video_layout
    from core.data.video import write_video

    layout = long_video_layout()
    with tempfile.TemporaryDirectory() as folder:
        videos = {}
        for name, dissolve in (("fade", False), ("dissolve", True)):
            for size in ((96, 160), (height, width)):
                path = Path(folder) / f"{name}-{size[0]}x{size[1]}.mp4"
                write_video(path, long_video_frames(*size, dissolve=dissolve), fps=24)
                videos[(name, size)] = path

        print(f"{'detectors':<36} {'video':<18} boundaries  false cuts")
        for label, make in detector_settings().items():
            for (name, size), path in videos.items():
                scan = scan_video(str(path), make() if make else None)
                cuts = [first for first, _ in scan.scenes[1:]]
                found, total, false = score(cuts, layout)
                video = f"{name} {size[0]}x{size[1]}"
                print(f"{label:<36} {video:<18} {found}/{total}{'':8}{false}")
        for (name, size), path in videos.items():
            frozen, moving = still_margin(scan_video(str(path)), layout)
            print(
                f"motion meter, {name} {size[0]}x{size[1]}: frozen picture at most "
                f"{frozen:.2f}, moving scenes at least {moving:.2f}"
            )

        source = videos[("fade", (height, width))]
        seconds = len(long_video_frames(16, 16)) / 24
        times = []
        for round_ in range(args.rounds):
            out = Path(folder) / f"out-{round_}"
            started = time.perf_counter()
            split_sources([source], out, options_from("5b"))
            times.append(time.perf_counter() - started)
        best = min(times)
        print(
            f"split of {seconds:.0f} s of {width}x{height} 24 fps video on {os.cpu_count()} "
            f"cores: {statistics.median(times):.2f} s median, {best:.2f} s best of {args.rounds}"
        )
        print(f"split throughput: {seconds / statistics.median(times):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
