"""The job store: one SQLite database (WAL) at `<workspace>/jobs.db`.

Every process that deals with jobs (the app, the `python -m jobs` CLI, the queue tick a finished
job runs) opens the same file; WAL lets readers go on while one writes, and a busy timeout makes
concurrent writers wait instead of failing. The schema carries a version and migrates forward
when an older database is opened.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DB_FILE = "jobs.db"
ACTIVE = ("starting", "running", "stopping")
FINISHED = ("succeeded", "failed", "stopped", "interrupted")
STATUSES = ("queued", *ACTIVE, *FINISHED)

# Each entry upgrades the schema by one version; append, never edit.
MIGRATIONS = [
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        gpu_ids TEXT NOT NULL DEFAULT '[]',
        pid INTEGER,
        pgid INTEGER,
        proc_start REAL,
        exit_code INTEGER,
        reason TEXT,
        suggestion TEXT,
        created REAL NOT NULL,
        started REAL,
        ended REAL,
        last_step INTEGER NOT NULL DEFAULT 0,
        total_steps INTEGER,
        job_dir TEXT NOT NULL,
        stop_requested REAL,
        resume_requested INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        events_offset INTEGER NOT NULL DEFAULT 0,
        attempt_offset INTEGER NOT NULL DEFAULT 0,
        exclusive INTEGER NOT NULL DEFAULT 1
    );
    CREATE INDEX jobs_by_status ON jobs(status);
    CREATE INDEX jobs_by_created ON jobs(created);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class Job:
    id: str
    name: str
    kind: str
    status: str
    gpu_ids: list[int]
    job_dir: str
    created: float
    pid: int | None = None
    pgid: int | None = None
    proc_start: float | None = None
    exit_code: int | None = None
    reason: str | None = None
    suggestion: str | None = None
    started: float | None = None
    ended: float | None = None
    last_step: int = 0
    total_steps: int | None = None
    stop_requested: float | None = None
    resume_requested: int = 0
    attempts: int = 0
    events_offset: int = 0  # how far the heartbeat has read events.jsonl
    attempt_offset: int = 0  # where the current attempt's events begin
    exclusive: int = 1  # holds its GPUs (or the CPU) so that other jobs wait
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    def public(self) -> dict[str, Any]:
        """The record as `python -m jobs show --json` prints it."""
        return {
            "id": self.id,
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "gpu_ids": self.gpu_ids,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "suggestion": self.suggestion,
            "last_step": self.last_step,
            "total_steps": self.total_steps,
            "job_dir": self.job_dir,
            "created": self.created,
            "started": self.started,
            "ended": self.ended,
            "attempts": self.attempts,
        }


_COLUMNS = [name for name in Job.__dataclass_fields__ if name != "extra"]


def new_job_id(name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    slug = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")[:24] or "job"
    return f"{stamp}-{slug}-{uuid.uuid4().hex[:6]}"


class JobStore:
    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace).expanduser()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.runs_dir = self.workspace / "runs"
        self.path = self.workspace / DB_FILE
        self._db = sqlite3.connect(
            self.path, timeout=10.0, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        """Bring the schema up to SCHEMA_VERSION, one migration a transaction.

        The version is read again under the write lock, so two processes opening a new
        workspace at once migrate it once.
        """
        while True:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} was written by a newer version of the app (schema "
                        f"{version}, this one knows {SCHEMA_VERSION})"
                    )
                if version == SCHEMA_VERSION:
                    self._db.execute("COMMIT")
                    return
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {version + 1}")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self._db.close()

    # ---- reading --------------------------------------------------------------------------

    @staticmethod
    def _job(row: sqlite3.Row) -> Job:
        data = dict(row)
        data["gpu_ids"] = json.loads(data["gpu_ids"] or "[]")
        return Job(**data)

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._job(row) if row else None

    def list(self, statuses: tuple[str, ...] | None = None) -> list[Job]:
        """Jobs, newest first (optionally only those in `statuses`)."""
        if statuses:
            marks = ",".join("?" * len(statuses))
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY created DESC, id DESC",
                statuses,
            ).fetchall()
        else:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created DESC, id DESC").fetchall()
        return [self._job(row) for row in rows]

    # ---- writing --------------------------------------------------------------------------

    def add(
        self,
        name: str,
        kind: str,
        gpu_ids: list[int],
        job_id: str | None = None,
        exclusive: bool = True,
    ) -> Job:
        job_id = job_id or new_job_id(name)
        job = Job(
            id=job_id,
            name=name,
            kind=kind,
            status="queued",
            gpu_ids=list(gpu_ids),
            job_dir=str(self.runs_dir / job_id),
            created=time.time(),
            exclusive=int(exclusive),
        )
        values = {name: getattr(job, name) for name in _COLUMNS}
        values["gpu_ids"] = json.dumps(values["gpu_ids"])
        marks = ",".join("?" * len(values))
        self._db.execute(
            f"INSERT INTO jobs ({','.join(values)}) VALUES ({marks})", tuple(values.values())
        )
        return job

    def update(self, job_id: str, **changes: Any) -> None:
        if "gpu_ids" in changes:
            changes["gpu_ids"] = json.dumps(changes["gpu_ids"])
        assignments = ", ".join(f"{name} = ?" for name in changes)
        self._db.execute(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changes.values(), job_id))

    def transition(self, job_id: str, from_statuses: tuple[str, ...], **changes: Any) -> bool:
        """Apply `changes` only if the job is still in one of `from_statuses` (atomic claim)."""
        assignments = ", ".join(f"{name} = ?" for name in changes)
        marks = ",".join("?" * len(from_statuses))
        cursor = self._db.execute(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
            (*changes.values(), job_id, *from_statuses),
        )
        return cursor.rowcount == 1

    def delete(self, job_id: str) -> None:
        self._db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
