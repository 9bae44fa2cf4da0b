"""The app opens in a real browser with no network and shows the trainer's command."""

from __future__ import annotations


def test_the_page_opens_and_shows_the_trainer_command(app_url, page):
    page.goto(app_url)
    page.get_by_text("CogVideoX Studio").first.wait_for(timeout=30_000)
    assert "accelerate launch -m core.train" in page.content()
