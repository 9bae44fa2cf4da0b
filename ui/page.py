"""The Gradio page: one tab a module, built on the jobs layer. The web process never imports
torch: everything heavy (training, previews, pushes, building the demo model) runs in jobs."""

from __future__ import annotations

import json
from pathlib import Path

import gradio as gr

from ui.dataset_tab import DatasetTab
from ui.preview_tab import PreviewTab
from ui.publish_tab import PublishTab
from ui.runs_tab import RunsTab
from ui.studio import Studio
from ui.train_tab import TrainTab

TITLE = "CogVideoX Studio"
CSS_PATH = Path(__file__).resolve().parents[1] / "assets" / "studio.css"


def build_page(studio: Studio) -> gr.Blocks:
    train, dataset, runs = TrainTab(studio), DatasetTab(studio), RunsTab(studio)
    preview, publish = PreviewTab(studio), PublishTab(studio)
    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(
            f"# {TITLE}\nTeach CogVideoX something new: a folder of captioned clips "
            "in, a LoRA out, on your own GPUs."
        )
        with gr.Tabs(selected="dataset") as tabs:
            with gr.Tab("1 · Dataset", id="dataset"):
                dataset_area = gr.Column()
            with gr.Tab("2 · Train", id="train"):
                train.render()
            with gr.Tab("3 · Runs", id="runs") as runs_tab:
                runs.render()
            with gr.Tab("4 · Preview", id="preview") as preview_tab:
                preview.render(train.gpus)
            with gr.Tab("5 · Publish", id="publish") as publish_tab:
                publish.render()
        with dataset_area:
            dataset.render(
                train.form.widgets["video_resolution_buckets"], train.form.widgets["data_root"]
            )

        def started(result):
            message, job = result
            if job is None:
                return message, gr.skip(), gr.Tabs()
            choices = [(job.name, job.id)]
            return message, gr.Dropdown(choices=choices, value=job.id), gr.Tabs(selected="runs")

        train.wire_start(([runs.selected, tabs], started))
        private = {"api_visibility": "private"}

        def duplicate(job_id):
            job = studio.runner.store.get(job_id) if job_id else None
            if job is None or job.kind != "train":
                return (gr.skip(), gr.skip(), *[gr.skip()] * len(train.form.fields))
            spec = json.loads((Path(job.job_dir) / "spec.json").read_text())
            return (
                gr.Tabs(selected="train"),
                f"{job.name} (copy)",
                *train.form.values_of(spec["train"]),
            )

        runs.duplicate.click(
            duplicate, [runs.selected], [tabs, train.name, *train.form.components], **private
        )
        preview_tab.select(
            lambda: gr.Dropdown(choices=preview.run_choices()), None, [preview.run], **private
        )
        publish_tab.select(
            lambda: gr.Dropdown(choices=preview.run_choices()), None, [publish.run], **private
        )
        runs_tab.select(runs.refresh, [runs.selected], runs.view, **private)
        page.load(runs.refresh, [runs.selected], runs.view, **private)

        def landing():
            """A refreshed or reopened page lands on the runs while one is on its way."""
            active = studio.runner.store.list(("queued", "starting", "running", "stopping"))
            return gr.Tabs(selected="runs") if any(j.kind == "train" for j in active) else gr.Tabs()

        page.load(landing, None, [tabs], **private)
        page.load(lambda: gr.Dropdown(choices=dataset.choices()), None, [dataset.choice], **private)
    return page


def css() -> str:
    return CSS_PATH.read_text()
