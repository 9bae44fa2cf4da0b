"""What every tab of the page shares: the workspace, the job runner and the run followers.

Everything the page shows is read from the job store and the job folders, so a refresh or an app
restart loses nothing; the only state kept in this process is caches (followers that remember
how far each events file was read) and, for this process's lifetime only, a Hub token the user
typed (never written anywhere).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.confine import Confinement, is_dataset_folder
from core.errors import UserError
from core.files import write_text_atomic
from jobs.events import RunFollower
from jobs.runner import Runner
from jobs.store import Job

REPO_ROOT = Path(__file__).resolve().parents[1]
PRESETS_DIR = REPO_ROOT / "assets" / "presets"
PAGE_STATE_FILE = "page-state.json"
TINY_MODEL_BUILD_SECONDS = 300


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
    standby: bool = True  # keep a trainer ready for CPU runs (jobs/standby.py)

    def __post_init__(self):
        self.workspace = Path(self.workspace).resolve()
        self.runner = Runner(self.workspace, stop_grace=self.stop_grace, standby=self.standby)
        self.datasets_dir = self.workspace / "datasets"
        self.models_dir = self.workspace / "models"
        self.datasets_dir.mkdir(parents=True, exist_ok=True)
        self._followers: dict[str, RunFollower] = {}
        self._lock = threading.Lock()
        self._hub_token: str | None = None
        self._builds: dict[Path, tuple[subprocess.Popen, Path]] = {}  # tiny models being built
        self._files_lock = threading.Lock()  # the builds and the page state; not the heartbeat's

    # ---- runs ------------------------------------------------------------------------------

    def heartbeat(self) -> list[Job]:
        """Reconcile and schedule once, then every job, newest first."""
        with self._lock:
            self.runner.poll()
            return self.runner.store.list()

    def warm_standby(self) -> None:
        """Keep a trainer ready for the next run on the CPU (jobs/standby.py): its imports are
        done before Start, seconds off the wait for the first loss point."""
        with self._lock:
            self.runner.warm_standby()

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

    def ensure_tiny_model(self, target: Path, variant: str) -> str:
        """Start building a preset's tiny model (never downloaded) unless it exists or is being
        built; returns a note for the page. A subprocess builds it: the web process never
        imports torch, and the page does not wait for it."""
        target = Path(target)
        with self._files_lock:
            if (target / "model_index.json").is_file() or target in self._builds:
                return ""
            target.parent.mkdir(parents=True, exist_ok=True)
            log = target.parent / f".{target.name}.build.log"
            with open(log, "wb") as output:
                process = subprocess.Popen(
                    [sys.executable, "-m", "core.tiny", str(target), "--variant", variant],
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            self._builds[target] = (process, log)
        return f"Building the tiny demo model in {target} (a few seconds; Start waits for it)."

    def wait_for_model(self, model: str) -> None:
        """Wait for a tiny model this app is building at `model`, if any; UserError if the
        build failed."""
        with self._files_lock:
            build = self._builds.get(Path(model))
        if build is None:
            return
        process, log = build
        try:
            code = process.wait(timeout=TINY_MODEL_BUILD_SECONDS)
        except subprocess.TimeoutExpired:
            raise UserError(
                f"--pretrained_model_name_or_path: the tiny demo model in {model} is still being "
                f"built after {TINY_MODEL_BUILD_SECONDS} s; press Start again in a moment"
            ) from None
        with self._files_lock:
            self._builds.pop(Path(model), None)
        if code != 0:
            lines = log.read_text(errors="replace").strip().splitlines()
            raise UserError(
                f"--pretrained_model_name_or_path: building the tiny demo model failed "
                f"({lines[-1] if lines else f'exit status {code}'}); see {log}"
            )

    # ---- what the page showed, for a refresh or an app restart -------------------------------

    def page_state(self) -> dict[str, Any]:
        """The dataset, preset and form the page showed last (empty on a first visit)."""
        try:
            state = json.loads((self.workspace / PAGE_STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # none yet, or damaged: the page opens as on a first visit
        return state if isinstance(state, dict) else {}

    def remember_page_state(self, **changes: Any) -> None:
        """Merge `changes` into the page state (never a token: only what the form shows)."""
        with self._files_lock:
            state = self.page_state()
            state.update(changes)
            write_text_atomic(self.workspace / PAGE_STATE_FILE, json.dumps(state, indent=2))

    # ---- the Hub token, in memory only ------------------------------------------------------

    def remember_token(self, token: str | None) -> None:
        if token and token.strip():
            self._hub_token = token.strip()

    def hub_token(self) -> str | None:
        import os

        return self._hub_token or os.environ.get("HF_TOKEN")
