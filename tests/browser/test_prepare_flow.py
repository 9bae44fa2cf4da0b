"""From one long video to a trained LoRA in the browser: upload it, split it into scene clips,
caption them automatically (the tiny captioner), edit one caption, train the CPU demo on them.

Kept short beside the first-hour flow (tests/browser/test_flow.py): a 26 s video of 32x48, one
9-frame clip a scene, captions of a few tokens, a few training steps.
"""

from __future__ import annotations

import re

from core.data.synthetic import write_long_video
from tests.browser.conftest import fill_field
from tests.browser.test_flow import wait_until

STEPS = 4


def test_one_long_video_split_captioned_and_trained(app, page, tmp_path, workspace):
    video = tmp_path / "summer holiday.mp4"
    write_long_video(video, height=32, width=48)
    page.goto(app.url)
    # 1. Upload the long video and split it: the clips open as the chosen dataset.
    page.get_by_text("Split long videos into scene clips").click()
    page.locator("#upload-long-videos input[type=file]").set_input_files(video)
    page.locator('#upload-long-videos [aria-label="summer holiday.mp4"]').wait_for()
    fill_field(page, "#split-frames input", "9")
    fill_field(page, "#split-max-clips input", "1")  # one clip a scene: 6 clips
    page.locator("#split").click()
    split = re.compile(r"Splitting summer holiday clips: done, 6 clips")
    page.locator("#prep-status").get_by_text(split).wait_for(timeout=120_000)
    clips = workspace / "datasets" / "summer holiday clips"
    assert len(list(clips.glob("*.mp4"))) == 6
    page.shots("split")
    # 2. Caption automatically: the table fills, each caption marked as the model's.
    page.get_by_text("Caption automatically").first.click()
    page.locator("#caption-model input").click()
    page.get_by_role("option", name="tiny test captioner").click()
    page.locator("#caption-auto").click()
    captioned = re.compile(r"Captioning summer holiday clips: done, 6 clips")
    page.locator("#prep-status").get_by_text(captioned).wait_for(timeout=180_000)
    written_by = [page.locator(f'#caption-table [data-testid="cell-{row}-2"]') for row in range(6)]
    wait_until(
        lambda: [cell.inner_text().strip() for cell in written_by] == ["model"] * 6,
        timeout=180,
        what="six captions marked as the model's",
    )
    assert len(list(clips.glob("*.txt"))) == 6
    # 3. A person edits one: it is theirs now.
    page.locator('#caption-table [data-testid="cell-1-1"]').dblclick()
    page.keyboard.press("Control+a")
    page.keyboard.type("a coloured square, edited")
    page.keyboard.press("Enter")
    page.locator("#save-captions").click()
    page.locator("#caption-message").get_by_text("Saved 1 caption.").wait_for()
    written_by[1].get_by_text("person (edited)").wait_for()
    assert sorted(clips.glob("*.txt"))[1].read_text().strip() == "a coloured square, edited"
    page.shots("captioned")
    # 4. The CPU demo trains on the clips.
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#preset input").click()
    page.get_by_role("option", name="CPU demo (tiny model)").click()
    page.get_by_text("GPU memory: no GPU needed").wait_for(timeout=120_000)
    data_root = page.locator("#field-data_root input, #field-data_root textarea").first
    assert data_root.input_value() == str(clips)
    fill_field(page, "#field-train_steps input", str(STEPS))
    page.get_by_role("tab", name="1 · Dataset").click()
    page.locator("#dataset-summary").get_by_text("6 samples will be trained on").wait_for()
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#start").click()
    header = page.locator("#run-header")
    header.get_by_text("my-lora").wait_for(timeout=60_000)
    wait_until(lambda: "succeeded" in header.inner_text(), timeout=300, what="the run to end")
    assert f"step {STEPS}/{STEPS}" in header.inner_text()
    page.shots("trained")
    assert not app.loaded_torch()
