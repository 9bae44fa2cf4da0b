"""Image-to-video in a real browser, kept short: upload clips, pick the tiny image-to-video demo
preset (its image settings appear), train a few steps, and preview from an uploaded image beside
the base model. tests/browser/test_flow.py walks the rest of the app (refresh, restart, push)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from core.data.synthetic import write_clip
from tests.browser.conftest import AppProcess, fill_field
from tests.browser.test_flow import box, field, pick_option, wait_until

STEPS = 4


def make_clips(folder: Path) -> Path:
    for index in range(2):
        write_clip(folder / f"clip {index}.mp4", frames=49, height=32, width=32, seed=index)
        (folder / f"clip {index}.txt").write_text(f"a coloured square, take {index}\n")
    return folder


@pytest.mark.timeout(600)  # about 90 s on an idle 2-core machine
def test_clips_to_an_image_to_video_lora_previewed_from_an_image(workspace, tmp_path, page):
    app = AppProcess(workspace).start()
    shots = page.shots
    try:
        page.goto(app.url)
        # 1. Clips in.
        page.locator("#upload-folder input[type=file]").set_input_files(
            make_clips(tmp_path / "i2v clips")
        )
        page.locator("#dataset-summary").get_by_text("2 samples will be trained on").wait_for()
        # 2. The tiny image-to-video demo: its image settings appear; a few steps.
        page.get_by_role("tab", name="2 · Train").click()
        pick_option(page, "#preset", "CPU demo, image-to-video")
        page.get_by_text("GPU memory: no GPU needed").wait_for(timeout=60_000)
        page.locator("#field-noised_image_dropout").wait_for(state="visible", timeout=60_000)
        assert field(page, "noised_image_dropout").input_value() == "0.05"
        fill_field(page, "#field-train_steps input", str(STEPS))
        shots("preset")
        # 3. Train to the end.
        page.locator("#start").click()
        header = page.locator("#run-header")
        header.get_by_text("my-lora").wait_for(timeout=30_000)
        wait_until(
            lambda: "succeeded" in header.inner_text(), timeout=300, what="the run to succeed"
        )
        page.locator("#validation-videos").locator("video, img").first.wait_for()
        # 4. Preview from an uploaded image, the LoRA beside the base.
        page.get_by_role("tab", name="4 · Preview").click()
        wait_until(lambda: page.locator("#preview-run input").input_value(), what="the run")
        wait_until(lambda: box(page, "#preview-base").input_value(), what="the base")
        start = tmp_path / "start.png"
        Image.new("RGB", (64, 48), (220, 180, 40)).save(start)
        page.locator("#preview-image input[type=file]").set_input_files(start)
        page.locator("#preview-image img").wait_for()
        page.get_by_label("Steps", exact=True).fill("2")
        page.get_by_label("Steps", exact=True).press("Tab")
        page.locator("#generate").click()
        page.locator("#preview-status").get_by_text("Done").wait_for(timeout=240_000)
        page.locator("#preview-panels").get_by_text("LoRA x0.75").wait_for()
        page.locator("#preview-video video").wait_for()
        kept = list((workspace / "previews" / "start-images").iterdir())
        assert len(kept) == 1 and kept[0].read_bytes()  # the upload, kept in the workspace
        shots("preview")
        assert not app.loaded_torch()
    finally:
        app.stop()  # the workspace fixture ends the jobs the test started
