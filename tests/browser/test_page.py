"""The app opens in a real browser with no network; its API needs the password under --auth."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from tests.browser.conftest import AppProcess


def test_the_page_opens_with_its_five_tabs(app, page):
    page.goto(app.url)
    for tab in ("1 · Dataset", "2 · Train", "3 · Runs", "4 · Preview", "5 · Publish"):
        page.get_by_role("tab", name=tab).wait_for()
    page.get_by_role("tab", name="2 · Train").click()
    page.locator("#show-command").click()
    page.locator("#command").get_by_text("core.train").first.wait_for()
    assert not app.loaded_torch()


def test_with_auth_the_page_and_its_api_refuse_requests_without_the_password(workspace, page):
    app = AppProcess(workspace, "--auth", "ada:secret-pass").start()
    try:
        for method, path in (
            ("GET", "config"),
            ("GET", "gradio_api/info"),
            ("POST", "gradio_api/queue/join"),
            ("POST", "gradio_api/upload"),
            ("GET", f"gradio_api/file={workspace}/jobs.db"),
        ):
            data = b"{}" if method == "POST" else None
            request = urllib.request.Request(
                app.url + path,
                method=method,
                data=data,
                headers={"Content-Type": "application/json"},
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code in (401, 403), path
        page.goto(app.url)
        page.locator("input[type=text]").fill("ada")
        page.locator("input[type=password]").fill("wrong")
        page.get_by_role("button", name="Login").click()
        page.get_by_text("Incorrect Credentials").wait_for()
        page.locator("input[type=text]").fill("ada")
        page.locator("input[type=password]").fill("secret-pass")
        page.get_by_role("button", name="Login").click()
        page.get_by_role("tab", name="1 · Dataset").wait_for()
    finally:
        app.stop()
