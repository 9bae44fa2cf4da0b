"""A new user's first hour, in a real browser, from the README's `make run` to a pushed LoRA.

The app starts as `make run` starts it, in a user's environment (no HF_HUB_OFFLINE). Upload a
folder of clips with a sub-folder and see what arrived, fix a caption and see it saved, type a
trigger word, pick the CPU demo preset, preview the base model, then start a run while the
preview worker sits idle (it steps aside and the run starts), watch the loss plot grow, survive
a refresh and an app restart (the page comes back as it was), preview the LoRA beside the base,
and publish to a Hub test server on loopback: a wrong token first (the token stays in the page),
then the right one. The web process never loads torch along the way.
"""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from core.data.synthetic import write_clip
from jobs.store import JobStore
from tests.browser.conftest import AppProcess, fill_field
from tests.hub_server import FakeHub

TOKEN = "hf_browser_test_token_0123456789"
STEPS = 300  # long enough to refresh and restart the app while it trains
TRIGGER = "SQR"


def make_upload(folder: Path) -> Path:
    """Four clips with captions: two at the top, two in a sub-folder (same names as above)."""
    for index in range(4):
        where = folder if index < 2 else folder / "take 2"
        where.mkdir(parents=True, exist_ok=True)
        name = f"clip {index % 2}"
        write_clip(where / f"{name}.mp4", frames=49, height=64, width=96, seed=index)
        (where / f"{name}.txt").write_text(f"a coloured square, take {index}\n")
    return folder


def run_step(page) -> int:
    """The step the run header shows now."""
    text = page.locator("#run-header").inner_text()
    match = re.search(r"step (\d+)/", text)
    return int(match.group(1)) if match else 0


def plot_steps(page) -> list[int]:
    """The steps of the points the loss plot draws now, read from the rendered chart.

    Gradio draws a LinePlot with Vega's SVG renderer, and Vega labels each point of the line's
    hover layer for screen readers: `aria-roledescription="point"`, `aria-label="step: 12; loss:
    0.31"`. An empty list while the chart is (re)drawn or absent.
    """
    labels = page.locator('#loss-plot svg [aria-roledescription="point"]').evaluate_all(
        "points => points.map(point => point.getAttribute('aria-label'))"
    )
    steps = (re.match(r"step: ([\d,]+);", label or "") for label in labels)
    return sorted(int(match.group(1).replace(",", "")) for match in steps if match)


def wait_until(check, timeout: float = 120.0, what: str = "the page"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def box(page, selector: str):
    """The text box of a Gradio field (an input, or a textarea for a Textbox)."""
    return page.locator(f"{selector} input, {selector} textarea").first


def field(page, name: str):
    return box(page, f"#field-{name}")


def pick_option(page, dropdown: str, option: str | None = None) -> None:
    page.locator(f"{dropdown} input").click()
    options = page.get_by_role("option")
    (options.filter(has_text=option) if option else options).first.click()


@pytest.fixture
def hub():
    with FakeHub(tokens={TOKEN: "tester"}) as server:
        yield server


@pytest.mark.timeout(900)  # about 250 s on an idle 2-core machine; room for a busy one
def test_the_first_hour_from_make_run_to_a_pushed_lora(workspace, tmp_path, page, hub):
    app = AppProcess(workspace, "--hub-endpoint", hub.url, via_make=True).start()
    shots = page.shots
    try:
        # 0. `make run` leaves the app online: nothing in its environment turns the Hub off.
        assert "HF_HUB_OFFLINE" not in app.environment()
        page.goto(app.url)
        # 1. Upload a folder with a sub-folder: what arrived is named, the sub-folder kept.
        page.locator("#upload-folder input[type=file]").set_input_files(
            make_upload(tmp_path / "my clips")
        )
        arrived = page.locator("#dataset-message")
        arrived.get_by_text(
            "4 clips, 4 caption files, in 2 folders (top level, take 2/)"
        ).wait_for()
        dataset = workspace / "datasets" / "my clips"
        assert (dataset / "take 2" / "clip 1.mp4").is_file()
        summary = page.locator("#dataset-summary")
        summary.get_by_text("4 samples will be trained on").wait_for()
        assert "49x480x720" in summary.inner_text()  # the report names the buckets it used
        shots("arrived")
        # 2. Edit a caption and save it: the confirmation shows beside the button.
        page.locator('#caption-table [data-testid="cell-1-1"]').dblclick()
        page.keyboard.press("Control+a")
        page.keyboard.type("a coloured square, edited")
        page.keyboard.press("Enter")
        page.locator("#save-captions").click()
        page.locator("#caption-message").get_by_text("Saved 1 caption.").wait_for()
        assert (dataset / "clip 1.txt").read_text().strip() == "a coloured square, edited"
        # 3. One trigger word: typed here, it is the run's --id_token.
        fill_field(page, "#dataset-trigger textarea, #dataset-trigger input", TRIGGER)
        shots("captions")
        # 4. The CPU demo preset: the report follows its buckets.
        page.get_by_role("tab", name="2 · Train").click()
        wait_until(lambda: field(page, "id_token").input_value() == TRIGGER, what="the trigger")
        pick_option(page, "#preset", "CPU demo (tiny model)")
        page.get_by_text("GPU memory: no GPU needed").wait_for(timeout=60_000)
        assert field(page, "data_root").input_value() == str(dataset)
        fill_field(page, "#field-train_steps input", str(STEPS))
        assert not page.locator("#field-video_column").is_visible()  # clips beside captions
        page.get_by_role("tab", name="1 · Dataset").click()
        page.locator("#dataset-summary").get_by_text("9x32x32").wait_for()
        # 5. A preview of the base model before any training: the worker stays warm, idle.
        page.get_by_role("tab", name="4 · Preview").click()
        wait_until(lambda: box(page, "#preview-base").input_value(), what="the base")
        page.locator("#preview-compare input").uncheck()  # nothing to compare with yet
        page.get_by_label("Steps", exact=True).fill("2")
        page.get_by_label("Steps", exact=True).press("Tab")
        page.locator("#generate").click()
        page.locator("#preview-status").get_by_text("Generating").wait_for(timeout=10_000)
        page.locator("#preview-status").get_by_text("Done").wait_for(timeout=180_000)
        store = JobStore(workspace)
        worker = next(j for j in store.list() if j.kind == "infer")
        assert worker.status == "running"
        shots("base-preview")
        # 6. Start: the idle worker steps aside and the run starts, its view opens.
        page.get_by_role("tab", name="2 · Train").click()
        clicked, clicked_at = time.monotonic(), time.time()
        page.locator("#start").click()
        header = page.locator("#run-header")
        header.get_by_text("my-lora").wait_for(timeout=30_000)
        header.get_by_text("running").wait_for(timeout=60_000)
        assert store.get(worker.id).stop_requested  # it stepped aside, not timed out
        # It runs in the trainer made ready when the preset was picked: no imports after Start.
        run = next(job for job in store.list() if job.kind == "train")
        assert psutil.Process(run.pid).children()[0].create_time() < clicked_at
        first = len(wait_until(lambda: plot_steps(page), what="a first point on the loss plot"))
        print(f"Start click to the first loss point: {time.monotonic() - clicked:.1f} s")
        header.get_by_text(f"/{STEPS}").wait_for()
        wait_until(lambda: len(plot_steps(page)) > first, what="more points on the loss plot")
        assert "no GPU memory to plot" in page.locator("#gpu-note").inner_text()
        shots("training")
        # 7. A refresh brings the same run back, at least as far along.
        before = wait_until(lambda: plot_steps(page), what="the loss plot before a refresh")
        page.reload()
        after = wait_until(
            lambda: (steps := plot_steps(page)) and len(steps) >= len(before) and steps,
            what="the loss plot after a refresh",
        )
        assert after[: len(before)] == before
        assert all(step > before[-1] for step in after[len(before) :])
        # 8. The app dies mid-run; a new one opens on the run and the form as the user left it.
        app.kill()
        app.start()
        page.goto(app.url)
        after_restart = wait_until(lambda: run_step(page), what="the run view after a restart")
        page.get_by_role("tab", name="1 · Dataset").click()
        page.locator("#dataset-summary").get_by_text("4 samples will be trained on").wait_for()
        page.get_by_role("tab", name="2 · Train").click()
        assert page.locator("#preset input").input_value() == "CPU demo (tiny model)"
        assert field(page, "train_steps").input_value() == str(STEPS)
        page.get_by_role("tab", name="3 · Runs").click()
        wait_until(
            lambda: "succeeded" in header.inner_text(), timeout=240, what="the run to succeed"
        )
        assert run_step(page) == STEPS >= after_restart
        page.locator("#validation-videos").locator("video, img").first.wait_for()
        shots("succeeded")
        # 9. Preview: the LoRA beside the base, with the run's own shape and steps.
        page.get_by_role("tab", name="4 · Preview").click()
        wait_until(lambda: page.locator("#preview-run input").input_value(), what="the run")
        assert page.get_by_label("Frames (4k+1)").input_value() == "9"
        page.locator("#preview-compare input").check()
        page.locator("#generate").click()
        page.locator("#preview-status").get_by_text("Done").wait_for(timeout=180_000)
        page.locator("#preview-panels").get_by_text("LoRA x0.75").wait_for()
        page.locator("#preview-video video").wait_for()
        shots("preview")
        # 10. Publish: the card names the trigger word and its sample opens; a wrong token is
        # refused and stays in the page to be fixed; the right one pushes.
        page.get_by_role("tab", name="5 · Publish").click()
        wait_until(lambda: page.locator("#publish-run input").input_value(), what="the run")
        fill_field(page, "#publish-repo input, #publish-repo textarea", "tester/square-lora")
        page.locator("#show-card").click()
        card = page.locator("#model-card")
        card.get_by_text(f"Trigger word: {TRIGGER}").wait_for()
        sample = card.locator("a", has_text="step").first.get_attribute("href")
        with urllib.request.urlopen(app.url.rstrip("/") + sample, timeout=10) as answer:
            assert answer.status == 200 and answer.read(4)
        token = page.locator("#publish-token input")
        token.fill(TOKEN + "-wrong")
        page.locator("#push").click()
        page.locator("#publish-status .studio-error").get_by_text("rejected the token").wait_for(
            timeout=60_000
        )
        assert token.input_value() == TOKEN + "-wrong"
        token.fill(TOKEN)
        page.locator("#push").click()
        link = page.locator("#repo-url")
        link.wait_for(timeout=120_000)
        assert link.inner_text().endswith("tester/square-lora")
        assert hub.repo("tester/square-lora").private
        assert "pytorch_lora_weights.safetensors" in hub.repo("tester/square-lora").files
        assert f"Trigger word: `{TRIGGER}`" in hub.repo("tester/square-lora").files[
            "README.md"
        ].decode("utf-8")
        shots("published")
        # The web process served all of it without torch.
        assert not app.loaded_torch()
    finally:
        app.stop()  # the workspace fixture ends the jobs the test started
    for path in workspace.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in path.read_bytes(), path
