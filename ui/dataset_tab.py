"""Dataset tab: bring clips in (folder, zip, loose files, a server folder or the demo clips),
read the report of what will be trained on, and fix captions in place.

The report judges the clips against the Train tab's buckets and says so; it follows them when a
preset or an edit changes them. Captions are edited in the table and written by Save captions
(find and replace edits the table too). The trigger word is one setting, the run's `--id_token`,
shown here and on the Train tab.

The dataset code (`core.data`) is imported by the handlers that use it, not here: building the
page needs none of it, and the page should start serving as soon as it can.
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
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
CAPTION_SUFFIXES = (".txt", ".csv", ".jsonl")
# The largest bucket suggested for clips that fit none: the reference's 480x720.
SUGGESTED_MAX_SIDES = (480, 720)

# The browser knows where in the chosen folder each file was; the upload keeps only its name.
# Read the paths when the folder is picked (page head script, assets/studio.js) and send them.
FOLDER_PATHS_JS = """(files, name, buckets, paths) => {
  const picked = window.studioFolderPaths || [];
  window.studioFolderPaths = [];
  return [files, name, buckets, JSON.stringify(picked)];
}"""


def make_demo_clips(folder: Path) -> Path:
    """Four generated clips with captions (pairs layout): nothing is downloaded."""
    from core.data.synthetic import write_clip

    folder.mkdir(parents=True, exist_ok=True)
    for index, caption in enumerate(DEMO_CLIPS):
        write_clip(folder / f"demo-{index}.mp4", frames=49, height=96, width=144, seed=index)
        (folder / f"demo-{index}.txt").write_text(caption + "\n", encoding="utf-8")
    return folder


def _message(text: str, kind: str = "info") -> str:
    return f'<div class="studio-{kind}">{text}</div>' if text else ""


def describe_arrival(folder: Path) -> str:
    """What an import brought: clips, images and captions, in which sub-folders."""
    from core.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES

    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
    kinds = Counter()
    for path in files:
        suffix = path.suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            kinds["clip"] += 1
        elif suffix in IMAGE_SUFFIXES:
            kinds["image"] += 1
        elif suffix in CAPTION_SUFFIXES:
            kinds["caption file"] += 1
        else:
            kinds["other file"] += 1
    parts = [f"{n} {kind}{'s' * (n != 1)}" for kind, n in kinds.items()]
    folders = sorted({p.parent.relative_to(folder).as_posix() for p in files})
    where = ", ".join("top level" if f == "." else f"{f}/" for f in folders[:8])
    if len(folders) > 8:
        where += f" and {len(folders) - 8} more"
    counted = ", ".join(parts) or "no files"
    return f"{counted}, in {len(folders)} folder{'s' * (len(folders) != 1)} ({where})"


def suggest_bucket(root: Path, files: list[str]) -> str | None:
    """A bucket every one of these clips fills: the longest 4k+1 frame count they all have, at
    their median size rounded down to multiples of 16 (at most 480x720). None if none can."""
    from core.config import SPATIAL_MULTIPLE, TEMPORAL_COMPRESSION
    from core.data.video import UnreadableMedia, is_media, probe

    infos = []
    for name in files:
        if not is_media(root / name):
            continue
        try:
            infos.append(probe(root / name))
        except (UnreadableMedia, OSError):
            continue
    if not infos:
        return None
    shortest = min(info.frames for info in infos)
    frames = (shortest - 1) // TEMPORAL_COMPRESSION * TEMPORAL_COMPRESSION + 1
    infos.sort(key=lambda info: info.height * info.width)
    middle = infos[len(infos) // 2]
    scale = min(1.0, SUGGESTED_MAX_SIDES[0] / middle.height, SUGGESTED_MAX_SIDES[1] / middle.width)
    height, width = (
        max(SPATIAL_MULTIPLE, int(side * scale) // SPATIAL_MULTIPLE * SPATIAL_MULTIPLE)
        for side in (middle.height, middle.width)
    )
    return f"{max(frames, 1)}x{height}x{width}"


class DatasetTab:
    def __init__(self, studio: Studio):
        self.studio = studio

    def render(
        self, buckets_widget: gr.Textbox, data_root_widget: gr.Textbox, trigger_widget: gr.Textbox
    ) -> None:
        """The tab; `buckets_widget`, `data_root_widget` and `trigger_widget` are the Train
        tab's fields this tab reads and fills."""
        self.buckets_widget = buckets_widget
        with gr.Row():
            with gr.Column(scale=2):
                self.name = gr.Textbox(
                    label="Name of a new dataset",
                    placeholder="my-style (default: the folder's or the zip's name)",
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
        self.use_bucket = gr.Button(visible=False, elem_id="use-suggested-bucket")
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
            label="Captions: edit them in the table, then Save captions",
            interactive=True,
            static_columns=[0, 2],
            elem_id="caption-table",
            column_widths=["25%", "63%", "12%"],
        )
        with gr.Row(equal_height=True):
            self.save = gr.Button(
                "Save captions", variant="primary", elem_id="save-captions", scale=1
            )
            self.caption_message = gr.HTML(elem_id="caption-message", scale=3)
        with gr.Row():
            self.trigger = gr.Textbox(
                label="Trigger word",
                info="The run puts it in front of every caption (--id_token, the same setting "
                "as on the Train tab); the caption files stay as they are, and the model card "
                "names it.",
                elem_id="dataset-trigger",
                scale=2,
            )
            self.find = gr.Textbox(label="Find", scale=1)
            self.replace = gr.Textbox(label="Replace with", scale=1)
            self.do_replace = gr.Button("Replace in the table", scale=1, elem_id="replace")

        self.view = [
            self.message,
            self.summary,
            self.chart,
            self.skipped,
            self.gallery,
            self.captions,
            data_root_widget,
            self.use_bucket,
        ]
        self.prep.wire()
        private = {"api_visibility": "private"}
        # Carries the folder upload's paths from the page script (a State never reaches it).
        self.folder_paths = gr.Textbox(visible=False)
        for upload, js in ((self.folder, FOLDER_PATHS_JS), (self.zip, None), (self.files, None)):
            # The upload box empties itself afterwards, ready for the next one.
            paths = self.folder_paths if upload is self.folder else gr.State("")
            upload.upload(
                self.import_upload,
                [upload, self.name, buckets_widget, paths],
                [self.choice, *self.view, upload],
                js=js,
                **private,
            )
        self.use_server.click(
            self.use_folder,
            [self.server_path, buckets_widget],
            [self.choice, *self.view],
            **private,
        )
        self.demo.click(self.make_demo, [buckets_widget], [self.choice, *self.view], **private)
        self.choice.input(self.choose, [self.choice, buckets_widget], self.view, **private)
        self.refresh.click(self.show, [self.choice, buckets_widget], self.view, **private)
        # The report follows the training shapes: a preset or an edit re-runs it.
        buckets_widget.change(self.show, [self.choice, buckets_widget], self.view, **private)
        self.use_bucket.click(
            lambda text: text.removeprefix("Use "), [self.use_bucket], [buckets_widget], **private
        )
        self.save.click(
            self.save_captions,
            [self.choice, self.captions, buckets_widget],
            [*self.view, self.caption_message],
            **private,
        )
        self.do_replace.click(
            self.replace_in_table,
            [self.captions, self.find, self.replace],
            [self.captions, self.caption_message],
            **private,
        )
        # One trigger word: typed here it sets the run's once the field is left (not on each
        # key, which would race the echo below), and the run's always shows here.
        gr.on(
            [self.trigger.blur, self.trigger.submit],
            lambda word: word,
            [self.trigger],
            [trigger_widget],
            **private,
        )
        trigger_widget.change(lambda word: word, [trigger_widget], [self.trigger], **private)

    # ---- handlers --------------------------------------------------------------------------

    def choices(self) -> list[tuple[str, str]]:
        return [(path.name, str(path)) for path in self.studio.datasets()]

    def _chosen(self, folder: Path, buckets: str, note: str = ""):
        self.studio.remember_page_state(dataset=str(folder))
        choice = gr.Dropdown(choices=self.choices(), value=str(folder))
        return (choice, *self._view(str(folder), buckets, note))

    def import_upload(self, files, name: str, buckets: str, paths: str = ""):
        from core.data.importing import import_files, safe_dataset_name

        files = files if isinstance(files, list) else [files] if files else []
        try:
            relative = [str(p) for p in json.loads(paths)] if paths else None
        except (ValueError, TypeError):
            relative = None  # not what the page script sends: the files keep their names
        first = Path(getattr(files[0], "name", files[0])) if files else None
        if name and name.strip():
            target = self.studio.datasets_dir / safe_dataset_name(name)
        else:  # unnamed: after the folder or the zip, else the time; numbered if taken
            picked = relative[0].replace("\\", "/").split("/")[0] if relative else None
            zipped = first.stem if first and first.suffix.lower() == ".zip" else None
            base = safe_dataset_name(
                (picked if relative and "/" in relative[0] else None)
                or zipped
                or time.strftime("dataset-%Y%m%d-%H%M%S")
            )
            target, number = self.studio.datasets_dir / base, 2
            while target.exists():
                target, number = self.studio.datasets_dir / f"{base}-{number}", number + 1
        try:
            folder = import_files([getattr(f, "name", f) for f in files], target, relative)
        except UserError as error:
            return (
                gr.Dropdown(),
                _message(html.escape(str(error)), "error"),
                *[gr.skip()] * (len(self.view) - 1),
                None,
            )
        note = f"Imported into <b>{html.escape(folder.name)}</b>: {describe_arrival(folder)}."
        return (*self._chosen(folder, buckets, note), None)

    def use_folder(self, path: str, buckets: str):
        from core.data.importing import link_server_folder

        try:
            folder = link_server_folder(path, self.studio.confinement)
        except UserError as error:
            return (
                gr.Dropdown(),
                _message(html.escape(str(error)), "error"),
                *[gr.skip()] * (len(self.view) - 1),
            )
        self.studio.remember_linked(folder)
        return self._chosen(folder, buckets, f"Using {html.escape(str(folder))} in place.")

    def make_demo(self, buckets: str):
        folder = make_demo_clips(self.studio.datasets_dir / "demo")
        return self._chosen(folder, buckets, "Generated four demo clips with captions.")

    def choose(self, folder: str, buckets: str):
        if folder:
            self.studio.remember_page_state(dataset=folder)
        return self._view(folder, buckets)

    def show(self, folder: str, buckets: str):
        return self._view(folder, buckets)

    def save_captions(self, folder: str, table: pd.DataFrame, buckets: str):
        """Write the table's captions; the confirmation shows beside the button."""
        from core.data.captions import write_captions

        if not folder:
            return (*self._view(folder, buckets), _message("Choose a dataset first.", "error"))
        try:
            changes = {str(row["file"]): str(row["caption"]) for _, row in table.iterrows()}
            count = write_captions(self.studio.confinement.path(folder, "Dataset"), changes)
        except UserError as error:
            return (*[gr.skip()] * len(self.view), _message(html.escape(str(error)), "error"))
        done = (
            f"Saved {count} caption{'s' * (count != 1)}."
            if count
            else "Nothing to save: the captions are as they were."
        )
        return (*self._view(folder, buckets), _message(done))

    @staticmethod
    def replace_in_table(table: pd.DataFrame, find: str, replace: str):
        """Find and replace in the table's captions; Save captions writes them."""
        if not find:
            return gr.skip(), _message("Type the text to find first.", "error")
        if table is None or table.empty:
            return gr.skip(), _message("Choose a dataset first.", "error")
        edited = table.copy()
        before = edited["caption"].astype(str)
        edited["caption"] = before.str.replace(find, replace, regex=False)
        count = int((edited["caption"] != before).sum())
        if not count:
            return gr.skip(), _message(f"No caption contains {html.escape(find)!r}.")
        return edited, _message(
            f"Replaced in {count} caption{'s' * (count != 1)} in the table: "
            "<b>Save captions</b> to keep the change."
        )

    # ---- the report ------------------------------------------------------------------------

    def _view(self, folder: str | None, buckets: str, note: str = "", _error: str = ""):
        from core.config import make_config
        from core.data.captions import read_captions
        from core.data.report import build_report
        from core.data.thumbnails import thumbnail

        empty_chart = pd.DataFrame({"bucket": [], "samples": []})
        no_bucket = gr.Button(visible=False)
        if not folder:
            message = _message(_error or "Choose or import a dataset.")
            return (message, "", empty_chart, [], [], [], gr.skip(), no_bucket)
        try:  # the page reaches only the workspace and the --data-dir folders
            self.studio.confinement.path(folder, "Dataset")
        except UserError as error:
            message = _message(html.escape(str(error)), "error")
            return (message, "", empty_chart, [], [], [], gr.skip(), no_bucket)
        shapes = " ".join((buckets or "").split())
        try:
            config = make_config({"data_root": folder, "video_resolution_buckets": shapes.split()})
            report = build_report(config)
        except UserError as error:
            message = _message(f"{html.escape(str(error))}{WHERE_BUCKETS}", "error")
            return (message, "", empty_chart, [], [], [], folder, no_bucket)
        root = Path(report.root)
        trained = len(report.samples)
        summary = (
            f"**{trained} samples will be trained on** ({report.videos} clips, "
            f"{report.images} images, {report.total_frames} frames), "
            f"{len(report.skipped)} skipped. Layout: {report.layout}.\n\n"
            f"Judged against the buckets **{shapes}**: the Train tab's *Video resolution "
            "buckets* (a preset sets them)."
        )
        if report.frames:
            f = report.frames
            summary += f"\n\nFrames per clip: {f.min:g} to {f.max:g} (median {f.median:g})."
        suggestion = no_bucket
        if not trained and not report.skipped:
            _error = _error or (
                "The dataset is empty: no clips or images with captions were found in it."
            )
        elif not trained:
            fitting = suggest_bucket(root, [row.file for row in report.skipped])
            advice = f" A bucket these clips fill: <b>{fitting}</b>." if fitting else ""
            _error = _error or (
                f"Nothing here can be trained on with the buckets {html.escape(shapes)}; see "
                f"the skipped files below.{advice}{WHERE_BUCKETS}"
            )
            if fitting:
                suggestion = gr.Button(f"Use {fitting}", visible=True)
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
        message = _message(_error, "error") if _error else _message(note)
        return message, summary, chart, skipped, gallery, captions, folder, suggestion


WHERE_BUCKETS = (
    " Change the buckets on the Train tab (<i>Video resolution buckets</i>, or pick a preset)."
)
