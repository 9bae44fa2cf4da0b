"""Where the web page may reach on the server: the workspace and the `--data-dir` folders.

Every path the page takes (a dataset folder, the data root, a local base model, the output, the
cache, a checkpoint to resume from, a LoRA to preview) goes through `Confinement`: links are
resolved first, then the real path must lie inside one of the allowed folders. Under the
workspace's `datasets/` folder (which only the app fills) a link is refused outright, wherever
it points: a dataset there is edited in place, so it must be the folder it looks like.

A model setting may also be a Hub id ("THUDM/CogVideoX-5b"): that names no server path. The
command line (`python -m core.train`, `python -m jobs start`) is the server user's own and is
not confined. Torch-free: the web process calls this.
"""

from __future__ import annotations

import os
from pathlib import Path

from core.errors import UserError
from core.models.source import is_hub_id


class OutsideWorkspace(UserError):
    """A path the page was given that reaches outside the folders the app may use."""


def names_local_path(value: str) -> bool:
    """Whether a model setting names a server path rather than a Hub repository."""
    return not is_hub_id(value.strip())


def absolute_model_or_path(value: str | None) -> str | None:
    """A path made absolute (a job runs in its own folder); a Hub id or nothing left as is."""
    if not value or not names_local_path(value):
        return value
    return str(Path(value.strip()).expanduser().resolve())


class Confinement:
    def __init__(self, roots: list[Path], datasets_dir: Path | None = None):
        """`roots`: the folders the page may use; `datasets_dir`: where links are refused."""
        self.roots = [Path(root).expanduser().resolve() for root in roots]
        self.datasets_dir = Path(os.path.abspath(datasets_dir)) if datasets_dir else None

    def path(self, value: str | Path, setting: str) -> Path:
        """The real path of `value` (links resolved), or OutsideWorkspace naming the setting."""
        given = Path(os.path.abspath(Path(value).expanduser()))
        self._refuse_dataset_links(given, setting)
        real = given.resolve()
        if not any(real.is_relative_to(root) for root in self.roots):
            where = ", ".join(str(root) for root in self.roots)
            shown = str(value) if str(real) == str(given) else f"{value} (a link to {real})"
            raise OutsideWorkspace(
                f"{setting}: {shown} is outside the folders this app may use ({where}); "
                "move it there, or start the app with --data-dir naming its folder"
            )
        return real

    def model(self, value: str, setting: str) -> str:
        """A Hub id as given, or a local model folder's real path inside the allowed folders."""
        if not value or not names_local_path(value):
            return value
        return str(self.path(value.strip(), setting))

    def train_settings(self, config) -> None:
        """Refuse a training config whose server paths reach outside the allowed folders."""
        if config.data_root:
            self.path(config.data_root, "--data_root")
        self.model(config.pretrained_model_name_or_path, "--pretrained_model_name_or_path")
        if config.cache_dir:
            self.path(config.cache_dir, "--cache_dir")
        resume = config.resume_from_checkpoint
        if resume and resume != "latest" and not resume.isdigit():
            self.path(resume, "--resume_from_checkpoint")
        if Path(config.output_dir).expanduser().is_absolute():
            self.path(config.output_dir, "--output_dir")

    def _refuse_dataset_links(self, given: Path, setting: str) -> None:
        if self.datasets_dir is None or not given.is_relative_to(self.datasets_dir):
            return
        current = self.datasets_dir
        for part in given.relative_to(self.datasets_dir).parts:
            current = current / part
            if current.is_symlink():
                raise OutsideWorkspace(
                    f"{setting}: {current} is a link; the app does not follow links in "
                    f"{self.datasets_dir} (upload the data, or use --data-dir for a server folder)"
                )


def is_dataset_folder(path: Path) -> bool:
    """A folder the Dataset tab lists: a real folder (not a link), not hidden."""
    return path.is_dir() and not path.is_symlink() and not path.name.startswith(".")
