"""The Gradio page: one tab a module, built on the jobs layer. The web process never imports
torch: everything heavy (training, previews, pushes, building the demo model) runs in jobs.

What the page was showing (the dataset, the preset and the form) is kept in the workspace, so a
refresh or an app restart opens where the user was; a page with a run under way opens on it.
Timers run only where there is something to watch: the Runs tab's while it is open, the
Preview's and Publish's while a preview or a push is on its way.
"""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from jobs.store import ACTIVE
from ui.dataset_tab import DatasetTab
from ui.preview_tab import PreviewTab
from ui.publish_tab import PublishTab
from ui.runs_tab import SCROLL_LOG_TO_END, RunsTab
from ui.studio import Studio
from ui.train_tab import TrainTab

TITLE = "CogVideoX Studio"
ASSETS = Path(__file__).resolve().parents[1] / "assets"
CSS_PATH = ASSETS / "studio.css"
SCRIPT_PATH = ASSETS / "studio.js"


def build_page(studio: Studio) -> gr.Blocks:
    train, dataset, runs = TrainTab(studio), DatasetTab(studio), RunsTab(studio)
    preview, publish = PreviewTab(studio), PublishTab(studio)
    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(
            f"# {TITLE}\nTeach CogVideoX something new: a folder of captioned clips "
            "in, a LoRA out, on your own GPUs."
        )
        with gr.Tabs(selected="dataset") as tabs:
            with gr.Tab("1 · Dataset", id="dataset") as dataset_tab:
                dataset_area = gr.Column()
            with gr.Tab("2 · Train", id="train") as train_tab:
                train.render()
            with gr.Tab("3 · Runs", id="runs") as runs_tab:
                runs.render()
            with gr.Tab("4 · Preview", id="preview") as preview_tab:
                preview.render(train.gpus)
            with gr.Tab("5 · Publish", id="publish") as publish_tab:
                publish.render()
        widgets = train.form.widgets
        with dataset_area:
            dataset.render(
                widgets["video_resolution_buckets"], widgets["data_root"], widgets["id_token"]
            )
        private = {"api_visibility": "private"}
        runs_outputs = [*runs.view, runs.timer]

        def started(job) -> dict:
            return {**runs.show_job(job), tabs: gr.Tabs(selected="runs")}

        train.wire_start(started, [*runs_outputs, tabs])

        def duplicate(job_id):
            job = studio.runner.store.get(job_id) if job_id else None
            if job is None or job.kind != "train":
                return (gr.skip(), gr.skip(), gr.skip(), *[gr.skip()] * len(train.form.fields))
            spec = json.loads((Path(job.job_dir) / "spec.json").read_text())
            return (
                gr.Tabs(selected="train"),
                gr.Timer(active=False),
                f"{job.name} (copy)",
                *train.form.values_of(spec["train"]),
            )

        runs.duplicate.click(
            duplicate,
            [runs.selected],
            [tabs, runs.timer, train.name, *train.form.components],
            **private,
        )
        # The Runs tab's timer runs while the tab is open; each other tab turns it off.
        runs_tab.select(runs.opened, [runs.selected, runs.shown], runs_outputs, **private).then(
            None, js=SCROLL_LOG_TO_END
        )
        for other in (dataset_tab, train_tab, preview_tab, publish_tab):
            other.select(lambda: gr.Timer(active=False), None, [runs.timer], **private)
        preview_tab.select(
            preview.opened,
            [
                preview.run,
                widgets["pretrained_model_name_or_path"],
                widgets["validation_prompts"],
                widgets["video_resolution_buckets"],
                preview.base,
            ],
            [preview.run, *preview.settings],
            **private,
        )
        publish_tab.select(
            lambda current: gr.Dropdown(
                choices=(choices := preview.run_choices()),
                value=current or (choices[0][1] if choices else None),
            ),
            [publish.run],
            [publish.run],
            **private,
        )

        def restore(buckets: str):
            """The page as the user left it; on the run view while a run is on its way."""
            state = studio.page_state()
            form = train.restored(state)
            buckets = _restored_value(state, "video_resolution_buckets", buckets)
            chosen = state.get("dataset")
            choices = dataset.choices()
            if chosen not in [value for _, value in choices]:
                chosen = None
            report = dataset.show(chosen, buckets) if chosen else [gr.skip()] * len(dataset.view)
            active = studio.runner.store.list(("queued", *ACTIVE))
            if any(job.kind == "train" for job in active):
                landing = [gr.Tabs(selected="runs"), *runs.opened(None, None)]
            else:
                landing = [gr.Tabs(), *[gr.skip()] * len(runs.view), gr.Timer(active=False)]
            return [
                *form,
                gr.Dropdown(choices=choices, value=chosen),
                *report,
                *landing,
            ]

        page.load(
            restore,
            [widgets["video_resolution_buckets"]],
            [
                train.preset,
                train.preset_info,
                train.name,
                *train.form.components,
                dataset.choice,
                *dataset.view,
                tabs,
                *runs_outputs,
            ],
            **private,
        ).then(train.warm_for, [train.preset], None, show_progress="hidden", **private)
    return page


def _restored_value(state: dict, field: str, default: str) -> str:
    form = state.get("form") if isinstance(state.get("form"), dict) else {}
    value = form.get(field)
    return value if isinstance(value, str) and value.strip() else default


def css() -> str:
    return CSS_PATH.read_text()


def head() -> str:
    """The page script (assets/studio.js), for the page's <head>."""
    return f"<script>\n{SCRIPT_PATH.read_text()}\n</script>"
