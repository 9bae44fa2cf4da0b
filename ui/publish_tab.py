"""Publish tab: push a finished run to the Hugging Face Hub, with its model card shown first.

The push runs as a job; the token the user types stays in the page and in this process's memory
for the session, and reaches the push only through that job's environment: never a file, log or
event. The card's sample links open the videos this app serves (on the Hub, the repo's copies).
"""

from __future__ import annotations

import html
import urllib.parse
from pathlib import Path

import gradio as gr
from pydantic import ValidationError

from core.config import describe_validation_error
from core.errors import UserError
from core.hub import OFFLINE_SENTENCE, hub_offline
from jobs.events import EventTail
from jobs.spec import JobSpec, PushSettings
from ui.studio import Studio

POLL_SECONDS = 1.0


def _message(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{text}</div>' if text else ""


def served_by_this_app(path: Path) -> str:
    """The address at which this app serves a file of the workspace (a sample video)."""
    return "/gradio_api/file=" + urllib.parse.quote(str(path))


class PublishTab:
    def __init__(self, studio: Studio):
        self.studio = studio

    def render(self) -> None:
        with gr.Row():
            self.run = gr.Dropdown(
                label="Finished run", choices=[], elem_id="publish-run", allow_custom_value=True
            )
            self.repo = gr.Textbox(
                label="Repo id", placeholder="your-name/your-lora", elem_id="publish-repo"
            )
            self.private = gr.Checkbox(label="Private", value=True, elem_id="publish-private")
        self.token = gr.Textbox(
            label="Hub token (kept in memory for this session only; or set HF_TOKEN)",
            type="password",
            elem_id="publish-token",
        )
        with gr.Row():
            self.card_button = gr.Button("Show model card", elem_id="show-card")
            self.push = gr.Button("Push to the Hub", variant="primary", elem_id="push")
        self.status = gr.HTML(elem_id="publish-status")
        self.card = gr.Markdown(elem_id="model-card")
        self.push_job = gr.State(None)
        self.timer = gr.Timer(POLL_SECONDS, active=False)  # on only while a push is on its way
        private = {"api_visibility": "private"}
        self.card_button.click(
            self.show_card, [self.run, self.repo], [self.card, self.status], **private
        )
        self.push.click(
            self.start_push,
            [self.run, self.repo, self.private, self.token],
            [self.push_job, self.status, self.card, self.timer],
            **private,
            trigger_mode="once",
        )
        self.timer.tick(
            self.poll,
            [self.push_job],
            [self.push_job, self.status, self.timer],
            show_progress="hidden",
            **private,
        )

    def show_card(self, run_id: str | None, repo: str):
        from core.hub import build_model_card

        job = self.studio.runner.store.get(run_id) if run_id else None
        if job is None or not repo:
            return "", _message("Choose a finished run and a repo id.", "error")
        try:
            card = build_model_card(Path(job.job_dir), repo, sample_link=served_by_this_app)
        except UserError as error:
            return "", _message(html.escape(str(error)), "error")
        # The YAML front matter is for the Hub; the page shows what people will read.
        body = card.split("\n---\n", 1)[1] if card.startswith("---\n") else card
        return body, ""

    def start_push(self, run_id: str | None, repo: str, private: bool, token: str):
        """Queue the push; the typed token stays in the field (a failed push can be retried)."""
        idle = gr.Timer(active=False)
        self.studio.remember_token(token)
        card, note = self.show_card(run_id, repo)
        if not card:
            return None, note, "", idle
        if hub_offline():
            return None, _message(html.escape(OFFLINE_SENTENCE), "error"), card, idle
        hub_token = self.studio.hub_token()
        if not hub_token:
            return (
                None,
                _message("Type a Hub token (or start the app with HF_TOKEN set).", "error"),
                card,
                idle,
            )
        job = self.studio.runner.store.get(run_id)
        try:
            spec = JobSpec(
                name=f"push {repo}",
                kind="push",
                push=PushSettings(
                    run_dir=job.job_dir,
                    repo_id=repo,
                    private=private,
                    endpoint=self.studio.hub_endpoint,
                ),
            )
        except ValidationError as error:
            message = _message(html.escape(describe_validation_error(error)), "error")
            return None, message, card, idle
        push_job = self.studio.runner.submit(spec, env={"HF_TOKEN": hub_token})
        return push_job.id, _message("Pushing..."), card, gr.Timer(POLL_SECONDS, active=True)

    def poll(self, push_id: str | None):
        idle = gr.Timer(active=False)
        if not push_id:
            return None, gr.skip(), idle
        self.studio.runner.poll()
        job = self.studio.runner.store.get(push_id)
        if job is None:
            return None, gr.skip(), idle
        events = EventTail(Path(job.job_dir) / "events.jsonl").read_new()
        pushes = [e for e in events if e.kind == "push"]
        last = pushes[-1] if pushes else None
        if last is not None and last.phase == "done" and last.url:
            url = html.escape(last.url)
            done = f'Pushed: <a href="{url}" id="repo-url" target="_blank">{url}</a>'
            return None, _message(done), idle
        if job.finished:
            reason = (
                last.message if last is not None and last.message else job.reason
            ) or "the push failed"
            return None, _message(html.escape(reason), "error"), idle
        if last is not None and last.total:
            return push_id, _message(f"{last.phase}: {last.done}/{last.total}"), gr.skip()
        return push_id, _message(f"{last.phase if last else 'starting'}..."), gr.skip()
