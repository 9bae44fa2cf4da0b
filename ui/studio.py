"""What every tab of the page shares: the workspace, the job runner and the run followers.

Everything the page shows is read from the job store and the job folders, so a refresh or an app
restart loses nothing; the only state kept in this process is caches (followers that remember
how far each events file was read) and, for this process's lifetime only, a Hub token the user
typed (never written anywhere).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from core.confine import Confinement, is_dataset_folder
from jobs.events import RunFollower
from jobs.runner import Runner
from jobs.store import Job

PRESETS_DIR = Path(__file__).resolve().parents[1] / "assets" / "presets"


@dataclass
class Preset:
    key: str
    title: str
    description: str
    gpu_memory: str
    train: dict
    needs_tiny_model: str | None = None


@dataclass
class Studio:
    workspace: Path
    data_dirs: list[Path] = field(default_factory=list)
    hub_endpoint: str | None = None
    stop_grace: float = 600.0

    def __post_init__(self):
        self.workspace = Path(self.workspace).resolve()
        self.runner = Runner(self.workspace, stop_grace=self.stop_grace)
        self.datasets_dir = self.workspace / "datasets"
        self.models_dir = self.workspace / "models"
        self.datasets_dir.mkdir(parents=True, exist_ok=True)
        self._followers: dict[str, RunFollower] = {}
        self._lock = threading.Lock()
        self._hub_token: str | None = None

    # ---- runs ------------------------------------------------------------------------------

    def heartbeat(self) -> list[Job]:
        """Reconcile and schedule once, then every job, newest first."""
        with self._lock:
            self.runner.poll()
            return self.runner.store.list()

    def follower(self, job: Job) -> RunFollower:
        """The job's summary, updated with only the bytes its events file gained since."""
        with self._lock:
            follower = self._followers.get(job.id)
            if follower is None:
                follower = self._followers[job.id] = RunFollower(job.job_dir)
            follower.poll()
            return follower

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._followers.pop(job_id, None)

    # ---- datasets --------------------------------------------------------------------------

    def datasets(self) -> list[Path]:
        found = sorted(p for p in self.datasets_dir.iterdir() if is_dataset_folder(p))
        linked = self.workspace / "linked-datasets.json"
        if linked.is_file():
            found += [Path(p) for p in json.loads(linked.read_text()) if Path(p).is_dir()]
        return found

    def remember_linked(self, folder: Path) -> None:
        linked = self.workspace / "linked-datasets.json"
        known = json.loads(linked.read_text()) if linked.is_file() else []
        if str(folder) not in known:
            known.append(str(folder))
            temporary = linked.with_name(".linked-datasets.json.partial")
            temporary.write_text(json.dumps(known, indent=2))
            temporary.replace(linked)

    @property
    def allowed_roots(self) -> list[Path]:
        return [self.workspace, *self.data_dirs]

    @property
    def confinement(self) -> Confinement:
        """What every server path the page takes must pass (jobs/confine.py)."""
        return Confinement(self.allowed_roots, self.datasets_dir)

    # ---- presets ---------------------------------------------------------------------------

    def presets(self) -> dict[str, Preset]:
        presets = {}
        for path in sorted(PRESETS_DIR.glob("*.json")):
            data = json.loads(path.read_text().replace("{workspace}", str(self.workspace)))
            presets[path.stem] = Preset(
                key=path.stem,
                title=data["title"],
                description=data["description"],
                gpu_memory=data["gpu_memory"],
                train=data["train"],
                needs_tiny_model=data.get("tiny_model"),
            )
        return presets

    # ---- the Hub token, in memory only ------------------------------------------------------

    def remember_token(self, token: str | None) -> None:
        if token and token.strip():
            self._hub_token = token.strip()

    def hub_token(self) -> str | None:
        import os

        return self._hub_token or os.environ.get("HF_TOKEN")
