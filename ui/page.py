"""The Gradio page. The web process never imports torch: everything heavy runs in job processes."""

from __future__ import annotations

import shlex

import gradio as gr

from core.config import TrainConfig, to_argv

TITLE = "CogVideoX Studio"


def reference_command(config: TrainConfig) -> str:
    """The trainer command line for a config, as a user would paste it into a shell."""
    return shlex.join(["accelerate", "launch", "-m", "core.train", *to_argv(config)])


def build_page() -> gr.Blocks:
    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(
            f"# {TITLE}\n"
            "Train CogVideoX LoRAs and full finetunes on your own GPUs. The trainer runs today "
            "from the command line; the dataset, training, runs, preview and publish tabs "
            "arrive here next."
        )
        gr.Code(
            reference_command(TrainConfig()),
            language="shell",
            label="Trainer command",
            interactive=False,
        )
    return page
