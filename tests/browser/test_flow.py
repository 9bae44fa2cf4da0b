"""A new user's whole path through the app, in a real browser, on the CPU demo preset.

Upload a folder of clips and read the report; then upload one long video, split it into scene
clips and caption them automatically (the tiny captioner), fix a caption, pick the CPU demo
preset, train on the clips, watch the loss plot grow, survive a refresh and an app restart, see
the validation video, preview the LoRA beside the base, and publish to a Hub test server on
loopback. The web process must never
have loaded torch along the way.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import pytest

from core.data.synthetic import write_clip, write_long_video
from jobs.runner import Runner
from jobs.store import ACTIVE
from tests.browser.conftest import AppProcess, fill_field
from tests.hub_server import FakeHub

TOKEN = "hf_browser_test_token_0123456789"
STEPS = 900  # long enough to refresh and restart the app while it trains


def make_upload(folder: Path) -> Path:
    for index in range(4):
        write_clip(folder / f"clip {index}.mp4", frames=49, height=64, width=96, seed=index)
        (folder / f"clip {index}.txt").write_text(f"a coloured square, take {index}\n")
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


@pytest.fixture
def hub():
    with FakeHub(tokens={TOKEN: "tester"}) as server:
        yield server


def test_from_a_folder_of_clips_to_a_published_lora(workspace, tmp_path, page, hub):
    # The app may go online for the push: the only Hub it knows is the loopback test server.
    app = AppProcess(workspace, "--hub-endpoint", hub.url, env={"HF_HUB_OFFLINE": "0"}).start()
    shots = page.shots
    try:
        page.goto(app.url)
        # 1. Upload a folder and read the report.
        page.locator("#upload-folder input[type=file]").set_input_files(
            make_upload(tmp_path / "my clips")
        )
        page.locator("#dataset-summary").get_by_text("4 samples will be trained on").wait_for()
        shots("report")
        # 2. One long video instead: split it into scene clips, which open as the dataset, and
        # caption them automatically; each caption shows as the model's until a person edits it.
        video = tmp_path / "summer holiday.mp4"
        write_long_video(video, height=32, width=48)
        page.get_by_text("Split long videos into scene clips").click()
        page.locator("#upload-long-videos input[type=file]").set_input_files(video)
        page.locator('#upload-long-videos [aria-label="summer holiday.mp4"]').wait_for()
        fill_field(page, "#split-frames input", "9")
        fill_field(page, "#split-max-clips input", "1")  # one clip a scene: 6 clips
        page.locator("#split").click()
        split = re.compile(r"Splitting summer holiday clips: done, 6 clips")
        page.locator("#prep-status").get_by_text(split).wait_for(timeout=120_000)
        dataset = workspace / "datasets" / "summer holiday clips"
        assert len(list(dataset.glob("*.mp4"))) == 6
        page.get_by_text("Caption automatically").first.click()
        page.locator("#caption-model input").click()
        page.get_by_role("option", name="tiny test captioner").click()
        page.locator("#caption-auto").click()
        captioned = re.compile(r"Captioning summer holiday clips: done, 6 clips")
        page.locator("#prep-status").get_by_text(captioned).wait_for(timeout=180_000)
        written_by = [
            page.locator(f'#caption-table [data-testid="cell-{row}-2"]') for row in range(6)
        ]
        wait_until(
            lambda: [cell.inner_text().strip() for cell in written_by] == ["model"] * 6,
            what="six captions marked as the model's",
        )
        shots("split-and-captioned")
        # Edit one caption in place and save it: it is the person's now.
        page.locator('#caption-table [data-testid="cell-1-1"]').dblclick()
        page.keyboard.press("Control+a")
        page.keyboard.type("a coloured square, edited")
        page.keyboard.press("Enter")
        page.locator("#save-captions").click()
        written_by[1].get_by_text("person (edited)").wait_for()
        edited = sorted(dataset.glob("*.txt"))[1]
        assert edited.read_text().strip() == "a coloured square, edited"
        shots("caption-saved")
        # 3. The CPU demo preset, a longer run, start.
        page.get_by_role("tab", name="2 · Train").click()
        page.locator("#preset input").click()
        page.get_by_role("option", name="CPU demo (tiny model)").click()
        page.get_by_text("GPU memory: no GPU needed").wait_for(timeout=120_000)
        assert page.locator(
            "#field-data_root input, #field-data_root textarea"
        ).first.input_value() == str(dataset)
        # What the server will run is what "Show command" prints: type until it has our steps
        # (under load a late update of the preset can still land after the first typing).
        for _ in range(3):
            fill_field(page, "#field-train_steps input", str(STEPS))
            page.locator("#show-command").click()
            try:
                page.locator("#command").get_by_text(f"--train_steps {STEPS}").wait_for(
                    timeout=10_000
                )
                break
            except Exception:
                continue
        assert f"--train_steps {STEPS}" in page.locator("#command").inner_text()
        shots("preset")
        page.locator("#start").click()
        page.locator("#run-header").get_by_text("my-lora").wait_for(timeout=60_000)
        # 4. The loss plot gains points.
        page.locator("#run-header").get_by_text(f"/{STEPS}").wait_for(timeout=120_000)  # typed
        first = len(wait_until(lambda: plot_steps(page), what="a first point on the loss plot"))
        wait_until(lambda: len(plot_steps(page)) > first, what="more points on the loss plot")
        shots("training")
        # 5. A refresh brings the same run back, at least as far along: the plot shows every
        # point it showed before, and only points of steps that arrived since besides.
        before = wait_until(lambda: plot_steps(page), what="the loss plot before a refresh")
        page.reload()
        after = wait_until(
            lambda: (steps := plot_steps(page)) and len(steps) >= len(before) and steps,
            what="the loss plot after a refresh",
        )
        assert after[: len(before)] == before
        assert all(step > before[-1] for step in after[len(before) :])
        assert run_step(page) >= before[-1]
        shots("after-refresh")
        # 6. The app dies mid-run; a new one shows the run live, and it finishes.
        app.kill()
        app.start()
        page.goto(app.url)
        page.get_by_role("tab", name="3 · Runs").click()
        after_restart = wait_until(lambda: run_step(page), what="the run after a restart")
        wait_until(
            lambda: "succeeded" in page.locator("#run-header").inner_text(),
            timeout=240,
            what="the run to succeed",
        )
        assert run_step(page) == STEPS >= after_restart
        page.locator("#validation-videos").locator("video, img").first.wait_for()
        shots("succeeded")
        # 7. Preview: the LoRA beside the base model.
        page.get_by_role("tab", name="4 · Preview").click()
        page.locator("#preview-run input").click()
        page.get_by_role("option").first.click()
        for name, value in (("Steps", "2"), ("Frames (4k+1)", "9")):
            page.get_by_label(name).fill(value)
            page.get_by_label(name).press("Tab")
        page.locator("#generate").click()
        page.locator("#preview-status").get_by_text("Done").wait_for(timeout=180_000)
        page.locator("#preview-video video").wait_for()
        shots("preview")
        # 8. Publish to the Hub test server.
        page.get_by_role("tab", name="5 · Publish").click()
        page.locator("#publish-run input").click()
        page.get_by_role("option").first.click()
        page.locator("#publish-repo input, #publish-repo textarea").first.fill("tester/square-lora")
        page.locator("#publish-token input").fill(TOKEN)
        page.locator("#push").click()
        link = page.locator("#repo-url")
        link.wait_for(timeout=120_000)
        assert link.inner_text().endswith("tester/square-lora")
        assert hub.repo("tester/square-lora").private
        assert "pytorch_lora_weights.safetensors" in hub.repo("tester/square-lora").files
        shots("published")
        # The web process served all of it without torch.
        assert not app.loaded_torch()
    finally:
        app.stop()
        # Jobs outlive the app by design; the preview worker must not outlive the test.
        runner = Runner(workspace)
        for job in runner.store.list(ACTIVE):
            runner._signal_group(job, signal.SIGKILL)
    for path in workspace.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in path.read_bytes(), path
