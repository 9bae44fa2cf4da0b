"""Who wrote each caption: a record of every caption the captioner wrote, kept beside the clips.

`<dataset>/.captions-by-model.jsonl` gets one line per caption written (the clip, the text, the
model, the settings' digest, the time), appended before the caption file is replaced. A caption
equal to one the model wrote for that clip is the model's; one that differs from all of them was
edited by a person; one with no line at all was written by a person (or came with the data).
The captioner replaces a person's caption only when told to (`--overwrite-person`), and the
dataset report shows each clip's origin. Torch-free: the web process reads it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RECORD_FILE = ".captions-by-model.jsonl"

MODEL = "model"  # the caption is what the model wrote
EDITED = "edited"  # a person changed what the model wrote
PERSON = "person"  # no model ever wrote a caption for this clip


def normalize(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class ModelCaption:
    file: str  # the clip, relative to the dataset folder
    text: str  # as written to the caption file (trigger word included), normalized
    model: str
    settings: str  # digest of the settings that produced it: a rerun of them skips it
    time: float


class CaptionRecord:
    def __init__(self, root: str | Path):
        self.path = Path(root) / RECORD_FILE
        self._by_file: dict[str, list[ModelCaption]] = {}
        if self.path.is_file():
            with open(self.path, encoding="utf-8") as handle:
                for line in handle:
                    try:
                        entry = ModelCaption(**json.loads(line))
                    except (ValueError, TypeError):
                        continue  # a line cut short by a crash: that write never happened
                    self._by_file.setdefault(entry.file, []).append(entry)

    def origin(self, file: str, caption: str | None) -> str | None:
        """MODEL, EDITED or PERSON for a clip's current caption; None when it has none."""
        text = normalize(caption or "")
        if not text:
            return None
        written = self._by_file.get(file)
        if not written:
            return PERSON
        return MODEL if any(entry.text == text for entry in written) else EDITED

    def last(self, file: str) -> ModelCaption | None:
        written = self._by_file.get(file)
        return written[-1] if written else None

    def add(self, file: str, text: str, model: str, settings: str) -> ModelCaption:
        """Record a caption before it is written (a crash in between leaves the old caption,
        which the record then does not claim)."""
        entry = ModelCaption(file, normalize(text), model, settings, time.time())
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self._by_file.setdefault(file, []).append(entry)
        return entry
