"""Bad input through the page: each gets a visible message, nothing crashes, nothing runs twice."""

from __future__ import annotations

import re
import time
import zipfile

from jobs.store import JobStore
from tests.browser.conftest import fill_field


def visible_error(page, where: str, text: str) -> None:
    page.locator(f"{where} .studio-error").get_by_text(text, exact=False).wait_for()


def test_bad_uploads_and_settings_get_messages_and_no_double_start(app, page, tmp_path, workspace):
    page.goto(app.url)
    # An empty upload: a zip with nothing in it.
    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    page.locator("#upload-zip input[type=file]").set_input_files(empty)
    visible_error(page, "#dataset-message", "is empty")
    # A zip with nothing usable in it.
    junk = tmp_path / "junk.zip"
    with zipfile.ZipFile(junk, "w") as archive:
        archive.writestr("notes.md", "hello")
        archive.writestr("clip.mp4", b"")
        archive.writestr("clip.txt", "a caption")
    page.locator("#dataset-choice input").click()  # the page still answers
    page.keyboard.press("Escape")
    page.locator("#upload-zip input[type=file]").set_input_files(junk)
    visible_error(page, "#dataset-message", "Nothing here can be trained on")
    page.locator("#skipped-table span").get_by_text("empty file (0 bytes)").wait_for()
    page.shots("junk-zip")

    page.locator("#demo-clips").click()
    page.locator("#dataset-summary").get_by_text("samples will be trained on").wait_for()
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#preset input").click()
    page.get_by_role("option", name="CPU demo (tiny model)").click()
    page.get_by_text("GPU memory: no GPU needed").wait_for(timeout=120_000)
    # An invalid bucket, then a negative learning rate: refused at the field, nothing starts.
    buckets = page.locator(
        "#field-video_resolution_buckets input, #field-video_resolution_buckets textarea"
    ).first
    buckets.fill("49x480")
    buckets.press("Tab")  # the page takes a value when the field loses focus
    page.locator("#start").click()
    visible_error(page, "#train-message", "is not FxHxW")
    buckets.fill("9x32x32")
    buckets.press("Tab")
    fill_field(page, "#field-lr input", "-0.001")
    page.locator("#start").click()
    visible_error(page, "#train-message", "Learning rate")
    page.shots("negative-lr")
    assert JobStore(workspace).list() == []

    # Start pressed twice: one job.
    fill_field(page, "#field-lr input", "0.003")
    fill_field(page, "#field-train_steps input", "100000")
    page.locator("#start").dblclick()
    page.locator("#run-header").get_by_text("my-lora").wait_for(timeout=60_000)
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#start").click()
    visible_error(page, "#train-message", "not started twice")
    time.sleep(1)
    assert len([j for j in JobStore(workspace).list() if j.kind == "train"]) == 1

    # Stop pressed twice: one stop, a message, and the run ends stopped with a checkpoint.
    page.get_by_role("tab", name="3 · Runs").click()
    page.locator("#run-header").get_by_text("step").wait_for()
    deadline = time.monotonic() + 120
    while not re.search(r"step [1-9]\d*/", page.locator("#run-header").inner_text()):
        assert time.monotonic() < deadline, "the run never logged a step"
        time.sleep(0.25)
    page.locator("#stop").click()
    page.locator("#stop").click()
    page.locator("#run-action-message").get_by_text("topping").wait_for()
    page.locator("#run-header").get_by_text("resume continues from checkpoint-").wait_for(
        timeout=120_000
    )
    page.shots("stopped")
    jobs = [j for j in JobStore(workspace).list() if j.kind == "train"]
    assert len(jobs) == 1 and jobs[0].status == "stopped"
