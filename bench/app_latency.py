"""How fast the page starts, and how soon a training step shows in the run view.

1. Time from launching `python app.py` to its first HTTP 200 (fresh workspace).
2. The delay between a step event written to a run's events.jsonl and the run view in a real
   browser (Debian's chromium) showing that step: the loss plot and the header are drawn by the
   same 1 s timer tick from the same summary.

    python bench/app_latency.py [--starts 3] [--events 8]

Last lines: `app_first_200_s: <median>` and `event_to_page_s: <median>` (targets: 3 s, 1.5 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def first_200_seconds(workspace: Path) -> float:
    from tests.browser.conftest import AppProcess

    app = AppProcess(workspace)
    started = time.perf_counter()
    app.start()  # returns once the page answers
    seconds = time.perf_counter() - started
    app.stop()
    return seconds


def fake_running_job(workspace: Path):
    """A running job whose process is a sleeper, so the page follows its events file."""
    import psutil

    from jobs.store import JobStore

    store = JobStore(workspace)
    job = store.add("latency", "train", [])
    Path(job.job_dir).mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    store.update(
        job.id,
        status="running",
        pid=sleeper.pid,
        pgid=sleeper.pid,
        proc_start=psutil.Process(sleeper.pid).create_time(),
        started=time.time(),
    )
    return job, sleeper


def event_to_page_seconds(workspace: Path, count: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    from core.events import EventWriter, StepEvent
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, AppProcess

    job, sleeper = fake_running_job(workspace)
    writer = EventWriter(job.job_dir)
    app = AppProcess(workspace).start()
    delays = []
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(app.url)
            page.get_by_role("tab", name="3 · Runs").click()
            page.locator("#run-header").get_by_text("latency").wait_for(timeout=30_000)
            for step in range(1, count + 1):
                time.sleep(0.37 * step % 1.0)  # land at different points of the timer's period
                written = time.perf_counter()
                writer.emit(
                    StepEvent(
                        step=step,
                        total_steps=1000,
                        epoch=1,
                        loss=1.0 / step,
                        lr=1e-4,
                        step_seconds=1.0,
                        samples_per_second=1.0,
                        eta_seconds=100.0,
                    )
                )
                page.locator("#run-header").get_by_text(f"step {step}/1000").wait_for(
                    timeout=30_000
                )
                delays.append(time.perf_counter() - written)
            browser.close()
    finally:
        app.stop()
        sleeper.kill()
        writer.close()
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--events", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    starts = []
    for _ in range(args.starts):
        with tempfile.TemporaryDirectory() as workspace:
            starts.append(first_200_seconds(Path(workspace)))
    with tempfile.TemporaryDirectory() as workspace:
        delays = event_to_page_seconds(Path(workspace), args.events)
    print("app start to first HTTP 200: " + ", ".join(f"{s:.2f}" for s in starts) + " s")
    print("step event to the page:      " + ", ".join(f"{d:.2f}" for d in delays) + " s")
    print(f"app_first_200_s: {statistics.median(starts):.2f}")
    print(f"event_to_page_s: {statistics.median(delays):.2f}")


if __name__ == "__main__":
    main()
