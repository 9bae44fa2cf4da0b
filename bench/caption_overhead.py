"""What a caption job costs beyond the model's own generate calls, with the tiny captioner.

Writes N generated clips (49 frames of 96x144, as the demo's), then runs the caption command's
own code (core/data/autocaption.py: plan, decode and sample frames, prompt, image processing,
generate, record, atomic write, events) with a timer around every `model.generate` call. The
difference is the job's overhead: what a real 8B model's minutes of generation would carry on
top. Model loading is timed apart.

    python bench/caption_overhead.py [--clips 12] [--frames 8] [--batch-size 1]

Last line: `caption overhead: <milliseconds per clip beyond generate>`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    args = parser.parse_args()

    from core.captioner import Captioner
    from core.data.autocaption import DEFAULT_PROMPT, CaptionSettings, caption_folder
    from core.data.preparation import Reporter
    from core.data.synthetic import write_clip
    from core.tiny_captioner import build_tiny_captioner

    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        model = build_tiny_captioner(root / "captioner")
        clips = root / "clips"
        for index in range(args.clips):
            write_clip(clips / f"clip {index}.mp4", frames=49, height=96, width=144, seed=index)

        started = time.perf_counter()
        captioner = Captioner(str(model))
        load = time.perf_counter() - started
        generate_seconds = 0.0
        generate = captioner.model.generate

        def timed_generate(*positional, **named):
            nonlocal generate_seconds
            begun = time.perf_counter()
            try:
                return generate(*positional, **named)
            finally:
                generate_seconds += time.perf_counter() - begun

        captioner.model.generate = timed_generate
        settings = CaptionSettings(
            model=str(model),
            prompt=DEFAULT_PROMPT,
            frames=args.frames,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
        )
        reporter = Reporter("caption", root / "events.jsonl")
        started = time.perf_counter()
        done, _ = caption_folder(clips, settings, reporter, threading.Event(), captioner)
        total = time.perf_counter() - started
        reporter.writer.close()

    overhead = (total - generate_seconds) / done
    print(f"clips captioned: {done}, {args.frames} frames each, batch {args.batch_size}")
    print(f"model load (tiny): {load:.2f} s")
    print(f"job: {total:.2f} s, of which generate: {generate_seconds:.2f} s")
    print(f"overhead: {overhead * 1000:.0f} ms a clip ({(total - generate_seconds) / total:.0%})")
    print(f"caption overhead: {overhead * 1000:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
