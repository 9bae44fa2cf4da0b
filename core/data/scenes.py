"""Scene boundaries of a long video, from PySceneDetect, and the still stretches inside scenes.

One decoding pass (PySceneDetect's PyAV backend, on frames it downscales to ~256 px wide) feeds
two of its detectors and a meter of our own:
- `ContentDetector` finds hard cuts (a jump in hue, saturation and brightness between frames);
- `ThresholdDetector` finds fades through black, where the picture changes little from frame to
  frame (the content score caught the generated fade only by the hue jump in its black frames);
- `MotionMeter` records each frame's mean change from the one before, so a frozen picture (a
  pause, a title card) can be cut out of the scene it sits in.
The detectors and thresholds were chosen by measurement on generated videos with known cuts,
fades, dissolves and still stretches (bench/split_scenes.py; the README gives the figures).
OpenCV comes with PySceneDetect (its detectors compute on cv2 arrays); decoding is PyAV's.
Torch-free.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scenedetect import SceneDetector

# ContentDetector's score is a weighted mean of per-channel HSV differences (0-255). On the
# generated videos 15 and 27 (its default) found every cut with no false one; 40 missed half.
CUT_THRESHOLD = 27.0
# ThresholdDetector: a frame whose every channel averages below this is black (its default).
FADE_THRESHOLD = 12.0
# MotionMeter: a frame whose mean absolute grey-level change is below this did not move. A frozen
# picture measured 0.00-0.19 (one keyframe blip of 0.55 at 96x160); moving scenes at least 0.65.
STILL_THRESHOLD = 0.5
STILL_BLIP_FRAMES = 2
# Below this many frames apart, two cuts are one (PySceneDetect's default, 0.6 s at 25 fps).
MIN_SCENE_FRAMES = 15


@dataclass
class SceneScan:
    """What one pass over a video found; frame numbers are the source's."""

    fps: float
    frames: int
    height: int
    width: int
    scenes: list[tuple[int, int]]  # [first frame, end frame) of each scene, in order
    motion: list[float] = field(default_factory=list)  # per frame; motion[0] is 0

    def still_runs(self, min_frames: int) -> list[tuple[int, int]]:
        """[first, end) of every run of at least `min_frames` frames that did not move.

        A run survives a blip of up to STILL_BLIP_FRAMES frames (the encoder refreshing a frozen
        picture at a keyframe measured 0.55 once in 72 frames).
        """
        runs: list[list[int]] = []
        for index in range(1, len(self.motion)):
            if self.motion[index] >= STILL_THRESHOLD:
                continue
            if runs and index - runs[-1][1] <= STILL_BLIP_FRAMES:
                runs[-1][1] = index + 1
            else:
                runs.append([index - 1, index + 1])  # the frame before it is frozen too
        return [(first, end) for first, end in runs if end - first >= min_frames]


class ScanStopped(Exception):
    """The scan was asked to stop before the end of the video."""


class MotionMeter(SceneDetector):
    """A PySceneDetect detector that reports no cuts: it records how much each frame moved."""

    def __init__(self, on_frame: Callable[[int], None] | None = None):
        super().__init__()
        self.motion: list[float] = []
        self._last: np.ndarray | None = None
        self._on_frame = on_frame

    def process_frame(self, timecode, frame_img: np.ndarray) -> list:
        grey = frame_img.mean(axis=2, dtype=np.float32)
        if self._last is None or self._last.shape != grey.shape:
            self.motion.append(0.0)
        else:
            self.motion.append(float(np.abs(grey - self._last).mean()))
        self._last = grey
        if self._on_frame is not None:
            self._on_frame(len(self.motion))
        return []


def default_detectors() -> list:
    """The detectors the split uses: hard cuts and fades through black."""
    from scenedetect import ContentDetector, ThresholdDetector

    return [
        ContentDetector(threshold=CUT_THRESHOLD, min_scene_len=MIN_SCENE_FRAMES),
        ThresholdDetector(threshold=FADE_THRESHOLD, min_scene_len=MIN_SCENE_FRAMES),
    ]


def scan_video(
    path: str,
    detectors: list | None = None,
    on_frame: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> SceneScan:
    """Scenes and per-frame motion of a video, in one decoding pass.

    `on_frame(done, total)` is called after each frame; setting `stop` ends the pass early with
    ScanStopped. Raises UnreadableMedia for a file PySceneDetect cannot open.
    """
    from scenedetect import SceneManager, VideoOpenFailure, open_video

    from core.data.video import UnreadableMedia

    try:
        # suppress_output: FFmpeg's own log lines stay out of the job's log.
        video = open_video(path, backend="pyav", suppress_output=True)
    except (VideoOpenFailure, OSError, ValueError) as error:
        raise UnreadableMedia(f"not a readable video ({str(error).strip()[:160]})") from None
    total = video.duration.frame_num if video.duration is not None else 0
    manager = SceneManager()
    for detector in detectors if detectors is not None else default_detectors():
        manager.add_detector(detector)

    def frame_seen(done: int) -> None:
        if stop is not None and stop.is_set():
            manager.stop()
        if on_frame is not None:
            on_frame(done, total)

    meter = MotionMeter(frame_seen)
    manager.add_detector(meter)
    manager.detect_scenes(video)
    if stop is not None and stop.is_set():
        raise ScanStopped()
    frames = len(meter.motion)
    if frames == 0:
        raise UnreadableMedia("the video has no frames")
    scene_list = manager.get_scene_list(start_in_scene=True)
    cuts = sorted({start.frame_num for start, _ in scene_list} - {0})
    bounds = [0, *[cut for cut in cuts if 0 < cut < frames], frames]
    width, height = video.frame_size
    return SceneScan(
        fps=float(video.frame_rate),
        frames=frames,
        height=height,
        width=width,
        scenes=list(itertools.pairwise(bounds)),
        motion=meter.motion,
    )
