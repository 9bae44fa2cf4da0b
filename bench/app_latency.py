"""How fast the page starts, how soon training shows in it, and what the page costs while idle.

1. Time from launching `python app.py` to its first HTTP 200 (fresh workspace).
2. The delay between a step event written to a run's events.jsonl and the run view in a real
   browser (Debian's chromium) showing that step: the loss plot and the header are drawn by the
   same timer tick from the same summary.
3. With `--first-hour`, a new user's path in the same browser: the CPU demo preset applied
   (first, while its tiny model builds in the background, and again), then Start clicked to the
   first point of the loss plot; then, with `--idle-minutes M`, the page left on the Publish tab
   with nothing running for M minutes, and chromium's renderer CPU over the last minute. The
   same path again on an app started with `--no-standby` (no trainer made ready before Start,
   jobs/standby.py) gives the Start figure side by side.

    python bench/app_latency.py [--starts 3] [--events 8] [--first-hour] [--idle-minutes 10]

Last lines: `app_first_200_s`, `event_to_page_s` (targets: 3 s, 1.5 s), and with --first-hour
`preset_apply_s`, `start_to_first_loss_point_s` (target 10 s on an idle 2-core machine) and,
with --idle-minutes, `idle_page_cpu_percent`. Nothing here is a test threshold: the figures
are printed for the README and the report, beside the machine's load while they were measured.
"""

from __future__ import annotations

import argparse
import os
import re
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


def launch_browser(playwright):
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS

    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def event_to_page_seconds(workspace: Path, count: int) -> list[float]:
    from playwright.sync_api import sync_playwright

    from core.events import EventWriter, StepEvent
    from tests.browser.conftest import AppProcess

    job, sleeper = fake_running_job(workspace)
    writer = EventWriter(job.job_dir)
    app = AppProcess(workspace).start()
    delays = []
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
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


def renderer_cpu_seconds() -> float:
    """User + system CPU seconds of every chromium renderer this process started."""
    import psutil

    total = 0.0
    for process in psutil.Process().children(recursive=True):
        try:
            if "--type=renderer" in " ".join(process.cmdline()):
                times = process.cpu_times()
                total += times.user + times.system
        except psutil.Error:
            continue
    return total


def loss_points(page) -> int:
    labels = page.locator('#loss-plot svg [aria-roledescription="point"]').evaluate_all(
        "points => points.map(point => point.getAttribute('aria-label'))"
    )
    return sum(1 for label in labels if re.match(r"step: [\d,]+;", label or ""))


def apply_demo_preset(page) -> float:
    """Seconds from choosing the CPU demo preset to every field it sets showing its value."""
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#preset input").click()
    chosen = time.perf_counter()
    page.get_by_role("option", name="CPU demo (tiny model)").click()
    page.wait_for_function(
        "() => document.querySelector('#field-train_steps input').value === '60'"
        " && document.querySelector('#preset-info').innerText.includes('no GPU needed')",
        timeout=120_000,
    )
    return time.perf_counter() - chosen


def first_hour(
    workspace: Path, idle_minutes: float, *app_flags: str
) -> dict[str, float | list[float]]:
    """Preset applies, Start to the first loss point, and the idle page's renderer CPU."""
    from playwright.sync_api import sync_playwright

    from jobs.runner import Runner
    from jobs.store import FINISHED
    from tests.browser.conftest import AppProcess

    app = AppProcess(workspace, *app_flags).start()
    figures: dict[str, float | list[float]] = {}
    try:
        with sync_playwright() as playwright:
            browser = launch_browser(playwright)
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(120_000)
            page.goto(app.url)
            page.locator("#demo-clips").click()
            page.locator("#dataset-summary").get_by_text("samples will be trained on").wait_for()
            applies = [apply_demo_preset(page)]
            model = workspace / "models" / "tiny-cogvideox-5b" / "model_index.json"
            while not model.is_file():  # built in the background: Start would wait for it
                time.sleep(0.2)
            # Another preset in between, so that the second apply changes every field again.
            page.locator("#preset input").click()
            page.get_by_role("option", name="CogVideoX-2B LoRA").click()
            page.wait_for_function(
                "() => document.querySelector('#field-train_steps input').value === '1000'"
            )
            applies.append(apply_demo_preset(page))
            figures["preset_apply_s"] = applies
            clicked = time.perf_counter()
            page.locator("#start").click()
            while not loss_points(page):
                time.sleep(0.05)
            figures["start_to_first_loss_point_s"] = time.perf_counter() - clicked
            if idle_minutes > 0:
                runner = Runner(workspace)
                while any(job.status not in FINISHED for job in runner.store.list()):
                    time.sleep(1)
                page.get_by_role("tab", name="5 · Publish").click()
                time.sleep(max(0.0, idle_minutes * 60 - 60))
                before, start = renderer_cpu_seconds(), time.perf_counter()
                time.sleep(60)
                used = renderer_cpu_seconds() - before
                figures["idle_page_cpu_percent"] = 100 * used / (time.perf_counter() - start)
            browser.close()
    finally:
        app.stop()
    return figures


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--first-hour", action="store_true")
    parser.add_argument("--idle-minutes", type=float, default=0.0)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    print(f"before: {load_average()}")
    starts = []
    for _ in range(args.starts):
        with tempfile.TemporaryDirectory() as workspace:
            starts.append(first_200_seconds(Path(workspace)))
    with tempfile.TemporaryDirectory() as workspace:
        delays = event_to_page_seconds(Path(workspace), args.events)
    figures = {}
    if args.first_hour:
        with tempfile.TemporaryDirectory() as workspace:
            figures = first_hour(Path(workspace), args.idle_minutes)
        # The same path with no trainer made ready before Start (jobs/standby.py), side by side.
        with tempfile.TemporaryDirectory() as workspace:
            cold = first_hour(Path(workspace), 0.0, "--no-standby")
        figures["without_standby_s"] = cold["start_to_first_loss_point_s"]
    print(f"after: {load_average()}")
    print("app start to first HTTP 200: " + ", ".join(f"{s:.2f}" for s in starts) + " s")
    print("step event to the page:      " + ", ".join(f"{d:.2f}" for d in delays) + " s")
    if figures:
        first, again = figures["preset_apply_s"]
        print(f"CPU demo preset applied: {first:.2f} s (model building), {again:.2f} s again")
        warm, cold = figures["start_to_first_loss_point_s"], figures["without_standby_s"]
        print(
            f"Start to the first loss point: {warm:.2f} s, {cold:.2f} s with --no-standby "
            f"(ratio {cold / warm:.2f})"
        )
    print(f"app_first_200_s: {statistics.median(starts):.2f}")
    print(f"event_to_page_s: {statistics.median(delays):.2f}")
    if figures:
        print(f"preset_apply_s: {figures['preset_apply_s'][1]:.2f}")
        if "idle_page_cpu_percent" in figures:
            print(f"idle_page_cpu_percent: {figures['idle_page_cpu_percent']:.1f}")
        print(f"start_to_first_loss_point_s: {figures['start_to_first_loss_point_s']:.2f}")


if __name__ == "__main__":
    main()
