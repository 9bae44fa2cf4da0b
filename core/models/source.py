"""Where a base model's files come from: a local diffusers folder or a Hub id. Torch-free.

The dataset report and the web process use this to check a model name and read component
configs without importing torch; `core.models.cogvideox` loads the weights.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSource:
    """A base model: a local diffusers folder or a Hub id (downloaded into the HF cache)."""

    name: str
    revision: str | None = None
    variant: str | None = None

    @property
    def is_local(self) -> bool:
        return Path(self.name).expanduser().is_dir()

    @property
    def location(self) -> str:
        return str(Path(self.name).expanduser()) if self.is_local else self.name

    def kwargs(self) -> dict[str, Any]:
        extra: dict[str, Any] = {}
        if self.revision:
            extra["revision"] = self.revision
        if self.variant:
            extra["variant"] = self.variant
        return extra


def is_hub_id(name: str) -> bool:
    """Whether a base model name is a Hub id (owner/name) rather than a path on this machine:
    Hub-id-shaped and no such folder here."""
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return False
    return bool(_HUB_ID.match(name))


def check_source(source: ModelSource) -> None:
    """Refuse a base model that can't exist before anything is loaded (one sentence)."""
    flag = "--pretrained_model_name_or_path"
    path = Path(source.name).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file() and not (path / "transformer").is_dir():
            raise UserError(
                f"{flag}: {path} is not a diffusers CogVideoX folder (it has no model_index.json)"
            )
        return
    if path.exists():
        raise UserError(f"{flag}: {path} is a file; name the model's folder or a Hub id")
    if not _HUB_ID.match(source.name) or source.name.startswith((".", "/", "~")):
        raise UserError(f"{flag}: the model folder {path} does not exist")


def read_component_config(source: ModelSource, component: str) -> dict[str, Any]:
    """A component's config.json, without loading its weights."""
    if source.is_local:
        config_path = Path(source.location) / component / "config.json"
        if not config_path.is_file():
            raise UserError(
                f"--pretrained_model_name_or_path: {source.location} has no {component}/config.json"
            )
        return json.loads(config_path.read_text())
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            source.name, "config.json", subfolder=component, revision=source.revision
        )
    except Exception as error:  # the hub client raises many types; all mean "can't fetch"
        raise UserError(
            f"--pretrained_model_name_or_path: could not fetch {source.name} from the Hub "
            f"({type(error).__name__}); check the id, your network and HF_TOKEN"
        ) from None
    return json.loads(Path(path).read_text())


# What a training run reads of a base model repo (CogVideoX repos hold nothing else it needs).
BASE_MODEL_FILES = [
    "model_index.json",
    "scheduler/*",
    "tokenizer/*",
    "text_encoder/*",
    "vae/*",
    "transformer/*",
]
DOWNLOAD_PHASE = "downloading base model"
Progress = Callable[[str, int, int], None]


def fetch_source(source: ModelSource, progress: Progress) -> ModelSource:
    """A Hub base model fetched into the Hugging Face cache, reporting bytes as they arrive.

    A first run of CogVideoX-5b downloads about 20 GB; without this the run would sit in
    "loading" for many minutes with nothing to show. A cached model costs one listing (or
    nothing offline); a local folder is returned as it is.
    """
    if source.is_local:
        return source
    from huggingface_hub import snapshot_download

    try:
        folder = snapshot_download(
            source.name,
            revision=source.revision,
            allow_patterns=BASE_MODEL_FILES,
            tqdm_class=_download_progress_class(progress),
        )
    except Exception as error:  # the hub client raises many types; all mean "can't fetch"
        raise UserError(
            f"--pretrained_model_name_or_path: could not download {source.name} from the Hub "
            f"({type(error).__name__}); check the id, your network, free disk space and HF_TOKEN"
        ) from None
    return ModelSource(folder, variant=source.variant)


def _download_progress_class(progress: Progress):
    """A progress bar class for snapshot_download that reports its byte total, not a bar.

    snapshot_download makes one bar per purpose and names them; the one named
    "huggingface_hub.snapshot_download" counts the bytes written for every file (its total
    grows as each file's download starts). Reports come at most twice a second, and at the end.
    """
    from huggingface_hub.utils import tqdm as hub_tqdm

    class DownloadProgress(hub_tqdm):
        def __init__(self, *args, name: str | None = None, **kwargs):
            self.reports = name == "huggingface_hub.snapshot_download"
            self.counted = kwargs.get("initial") or 0
            self.reported_at = 0.0
            kwargs["disable"] = True  # no terminal bar in train.log
            super().__init__(*args, name=name, **kwargs)

        def update(self, n: float | None = 1) -> None:
            self.counted += n or 0
            if time.monotonic() - self.reported_at >= 0.5:
                self.report()

        def close(self) -> None:
            self.report()
            super().close()

        def report(self) -> None:
            if self.reports:
                self.reported_at = time.monotonic()
                done = int(self.counted)
                progress(DOWNLOAD_PHASE, done, max(int(self.total or 0), done))

    return DownloadProgress
