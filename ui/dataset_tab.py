"""Dataset tab: bring clips in (folder, zip, loose files, a server folder or the demo clips),
read the report of what will be trained on, and fix captions in place.

The dataset code (`core.data`) is imported by the handlers that use it, not here: building the
page needs none of it, and the page should start serving as soon as it can.
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from core.errors import UserError
from ui.dataset_prep import DatasetPreparation, caption_rows
from ui.studio import Studio

DEMO_CLIPS = [
    "a red square sliding from left to right",
    "a green square falling from the top",
    "a blue square drifting across a gradient",
    "a yellow square crossing the frame diagonally",
]


def make_demo_clips(folder: Path) -> Path:
    """Four generated clips with captions (pairs layout): nothing is downloaded."""
    from core.data.synthetic import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    for index, caption in enumerate(DEMO_CLIPS):
        write_clip(folder / f"demo-{index}.mp4", frames=49, height=96, width=144, seed=index)
        (folder / f"demo-{index}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def _message(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{text}</div>'


class DatasetTab:
    def __init__(self, studio: Studio):
        self.studio = studio

    def render(self, buckets_widget: gr.Textbox, data_root_widget: gr.Textbox) -> None:
        self.buckets_widget = buckets_widget
        with gr.Row():
            with gr.Column(scale=2):
                self.name = gr.Textbox(
                    label="Name of a new dataset", placeholder="my-style (default: dataset-<date>)"
                )
                with gr.Row():
                    self.folder = gr.File(
                        file_count="directory", label="Upload a folder", elem_id="upload-folder"
                    )
                    self.zip = gr.File(file_types=[".zip"], label="or a zip", elem_id="upload-zip")
                    self.files = gr.File(
                        file_count="multiple", label="or clips and captions", elem_id="upload-files"
                    )
                with gr.Row():
                    self.server_path = gr.Textbox(
                        label="or a folder on this server", placeholder="/data/clips", scale=3
                    )
                    self.use_server = gr.Button("Use folder", scale=1)
                    self.demo = gr.Button("Generate demo clips", scale=1, elem_id="demo-clips")
                self.prep = DatasetPreparation(self.studio, self)
                self.prep.render()
            with gr.Column(scale=1):
                self.choice = gr.Dropdown(
                    label="Dataset",
                    choices=self.choices(),
                    elem_id="dataset-choice",
                    allow_custom_value=False,
                )
                self.refresh = gr.Button("Refresh report")
        self.message = gr.HTML(elem_id="dataset-message")
        with gr.Row():
            self.summary = gr.Markdown(elem_id="dataset-summary")
            self.chart = gr.BarPlot(
                x="bucket",
                y="samples",
                title="Samples per bucket",
                elem_id="bucket-chart",
                height=220,
            )
        self.skipped = gr.Dataframe(
            headers=["file", "reason"],
            label="Skipped files",
            interactive=False,
            elem_id="skipped-table",
        )
        self.gallery = gr.Gallery(label="Clips", columns=6, height=220, elem_id="clip-gallery")
        self.captions = gr.Dataframe(
            headers=["file", "caption", "written by"],
            label="Captions (edit, then save)",
            interactive=True,
            static_columns=[0, 2],
            elem_id="caption-table",
            column_widths=["25%", "63%", "12%"],
        )
        with gr.Row():
            self.save = gr.Button("Save captions", variant="primary", elem_id="save-captions")
            self.trigger = gr.Textbox(label="Trigger word", scale=1)
            self.add_trigger = gr.Button("Add to every caption", scale=1)
            self.find = gr.Textbox(label="Find", scale=1)
            self.replace = gr.Textbox(label="Replace with", scale=1)
            self.do_replace = gr.Button("Replace in every caption", scale=1)

        view = [
            self.message,
            self.summary,
            self.chart,
            self.skipped,
            self.gallery,
            self.captions,
            data_root_widget,
        ]
        self.view = view
        self.prep.wire()
        private = {"api_visibility": "private"}
        for upload in (self.folder, self.zip, self.files):
            # The upload box empties itself afterwards, ready for the next one.
            upload.upload(
                self.import_upload,
                [upload, self.name, buckets_widget],
                [self.choice, *view, upload],
                **private,
            )
        self.use_server.click(
            self.use_folder, [self.server_path, buckets_widget], [self.choice, *view], **private
        )
        self.demo.click(self.make_demo, [buckets_widget], [self.choice, *view], **private)
        self.choice.input(self.show, [self.choice, buckets_widget], view, **private)
        self.refresh.click(self.show, [self.choice, buckets_widget], view, **private)
        # The report follows the training shapes: a preset or an edit re-runs it.
        buckets_widget.change(self.show, [self.choice, buckets_widget], view, **private)
        self.save.click(
            self.save_captions, [self.choice, self.captions, buckets_widget], view, **private
        )
        self.add_trigger.click(
            self.bulk_trigger, [self.choice, self.trigger, buckets_widget], view, **private
        )
        self.do_replace.click(
            self.bulk_replace,
            [self.choice, self.find, self.replace, buckets_widget],
            view,
            **private,
        )

    # ---- handlers --------------------------------------------------------------------------

    def choices(self) -> list[tuple[str, str]]:
        return [(path.name, str(path)) for path in self.studio.datasets()]

    def _chosen(self, folder: Path, buckets: str, note: str = ""):
        choice = gr.Dropdown(choices=self.choices(), value=str(folder))
        return (choice, *self._view(str(folder), buckets, note))

    def import_upload(self, files, name: str, buckets: str):
        from core.data.importing import import_files, safe_dataset_name

        files = files if isinstance(files, list) else [files] if files else []
        if name and name.strip():
            target = self.studio.datasets_dir / safe_dataset_name(name)
        else:  # unnamed: after the zip, else the time, numbered if that exists already
            first = Path(getattr(files[0], "name", files[0])) if files else None
            base = first.stem if first and first.suffix.lower() == ".zip" else None
            base = safe_dataset_name(base or time.strftime("dataset-%Y%m%d-%H%M%S"))
            target, number = self.studio.datasets_dir / base, 2
            while target.exists():
                target, number = self.studio.datasets_dir / f"{base}-{number}", number + 1
        try:
            folder = import_files([getattr(f, "name", f) for f in files], target)
        except UserError as error:
            return (gr.Dropdown(), _message(str(error), "error"), *[gr.skip()] * 6, None)
        note = f"Imported {len(files)} files into {folder.name}."
        return (*self._chosen(folder, buckets, note), None)

    def use_folder(self, path: str, buckets: str):
        from core.data.importing import link_server_folder

        try:
            folder = link_server_folder(path, self.studio.allowed_roots)
        except UserError as error:
            return (gr.Dropdown(), _message(str(error), "error"), *[gr.skip()] * 6)
        self.studio.remember_linked(folder)
        return self._chosen(folder, buckets, f"Using {folder} in place.")

    def make_demo(self, buckets: str):
        folder = make_demo_clips(self.studio.datasets_dir / "demo")
        return self._chosen(folder, buckets, "Generated four demo clips with captions.")

    def show(self, folder: str, buckets: str):
        return self._view(folder, buckets)

    def save_captions(self, folder: str, table: pd.DataFrame, buckets: str):
        from core.data.captions import write_captions

        if not folder:
            return self._view(folder, buckets)
        try:
            changes = {str(row["file"]): str(row["caption"]) for _, row in table.iterrows()}
            count = write_captions(Path(folder), changes)
        except UserError as error:
            return self._view(folder, buckets, _error=str(error))
        return self._view(folder, buckets, f"Saved {count} caption{'s' * (count != 1)}.")

    def bulk_trigger(self, folder: str, word: str, buckets: str):
        from core.data.captions import add_trigger

        return self._bulk(folder, buckets, lambda: add_trigger(word), "Added the trigger word")

    def bulk_replace(self, folder: str, find: str, replace: str, buckets: str):
        from core.data.captions import find_replace

        return self._bulk(folder, buckets, lambda: find_replace(find, replace), "Replaced")

    def _bulk(self, folder: str, buckets: str, make_edit, done: str):
        from core.data.captions import bulk_edit

        if not folder:
            return self._view(folder, buckets)
        try:
            count = bulk_edit(Path(folder), make_edit())
        except UserError as error:
            return self._view(folder, buckets, _error=str(error))
        return self._view(folder, buckets, f"{done} in {count} captions.")

    # ---- the report ------------------------------------------------------------------------

    def _view(self, folder: str | None, buckets: str, note: str = "", _error: str = ""):
        from core.config import make_config
        from core.data.captions import read_captions
        from core.data.report import build_report
        from core.data.thumbnails import thumbnail

        empty_chart = pd.DataFrame({"bucket": [], "samples": []})
        if not folder:
            return (
                _message(_error or "Choose or import a dataset."),
                "",
                empty_chart,
                [],
                [],
                [],
                gr.skip(),
            )
        try:
            config = make_config({"data_root": folder, "video_resolution_buckets": buckets.split()})
            report = build_report(config)
        except UserError as error:
            return (_message(str(error), "error"), "", empty_chart, [], [], [], folder)
        root = Path(report.root)
        trained = len(report.samples)
        summary = (
            f"**{trained} samples will be trained on** ({report.videos} clips, "
            f"{report.images} images, {report.total_frames} frames), "
            f"{len(report.skipped)} skipped. Layout: {report.layout}."
        )
        if report.frames:
            f = report.frames
            summary += f"\n\nFrames per clip: {f.min:g} to {f.max:g} (median {f.median:g})."
        if not trained and not report.skipped:
            _error = _error or (
                "The dataset is empty: no clips or images with captions were found in it."
            )
        elif not trained:
            _error = _error or (
                "Nothing here can be trained on with buckets "
                f"{buckets}; see the skipped files below."
            )
        chart = pd.DataFrame(
            {"bucket": list(report.buckets), "samples": list(report.buckets.values())}
        )
        skipped = [[row.file, row.reason] for row in report.skipped]
        gallery = []
        for row in report.samples[:60]:
            thumb = thumbnail(root / row.file, root)
            if thumb:
                gallery.append((str(thumb), f"{row.file}: {row.caption[:80]}"))
        captions = caption_rows(root, read_captions(root))
        message = _message(_error, "error") if _error else _message(note) if note else ""
        return message, summary, chart, skipped, gallery, captions, folder
