"""The job store: one SQLite database (WAL) at `<workspace>/jobs.db`.

Every process that deals with jobs (the app, the `python -m jobs` CLI, the queue tick a finished
job runs) opens the same file; WAL lets readers go on while one writes, and a busy timeout makes
concurrent writers wait instead of failing. The schema carries a version and migrates forward
when an older database is opened.

The job folders are the record and this database only their index (jobs/recovery.py adds back
any folder it lacks). So a damaged database (truncated, overwritten) is kept aside under
another name and replaced by a fresh one, and on a disk too full to open it for writing the
store is read into memory: listing and following jobs go on, nothing is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import sqlite3
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.diskspace import full_disk_sentence, nearly_full

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


class StoreUnwritable(Exception):
    """The store cannot be written (its disk is full); the message says which disk."""


class _Damaged(sqlite3.DatabaseError):
    """An integrity check that found the database damaged."""


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    return isinstance(error, _Damaged) or code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _is_disk_trouble(error: sqlite3.DatabaseError, workspace: Path) -> bool:
    """SQLITE_FULL, or an I/O error (or a file it cannot create) on a disk with no space left."""
    code = getattr(error, "sqlite_errorcode", 0) & 0xFF
    io_trouble = code in (sqlite3.SQLITE_IOERR, sqlite3.SQLITE_CANTOPEN)
    return code == sqlite3.SQLITE_FULL or (io_trouble and nearly_full(workspace))


class JobStore:
    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace).expanduser()
        self.workspace.mkdir(parents=True, exist_ok=True)
        self.runs_dir = self.workspace / "runs"
        self.path = self.workspace / DB_FILE
        self.notice: str | None = None  # what opening it found wrong, to be said once
        self.read_only = False  # a copy in memory: the disk holding the store is full
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as error:
            if _is_damage(error):
                self._db = self._replace_damaged(error)
            elif _is_disk_trouble(error, self.workspace):
                self._db = self._copy_into_memory()
            else:
                raise

    def _connect(self) -> sqlite3.Connection:
        """The database, migrated to SCHEMA_VERSION and checked for damage."""
        db = sqlite3.connect(self.path, timeout=10.0, isolation_level=None, check_same_thread=False)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=10000")
            db.execute("PRAGMA synchronous=NORMAL")
            self._migrate(db)
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise _Damaged(verdict.splitlines()[-1])
        except BaseException:
            db.close()
            raise
        return db

    def _replace_damaged(self, error: sqlite3.DatabaseError) -> sqlite3.Connection:
        """Keep the damaged file aside and start a fresh one (once, whoever gets here first)."""
        with open(self.workspace / f".{DB_FILE}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                return self._connect()  # another process replaced it in the meantime
            except sqlite3.DatabaseError as again:
                if not _is_damage(again):
                    raise
            kept = self.path.with_name(f"{DB_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
            self.path.replace(kept)
            for suffix in ("-wal", "-shm"):
                side = self.path.with_name(DB_FILE + suffix)
                if side.exists():
                    side.replace(kept.with_name(kept.name + suffix))
            db = self._connect()
        self.notice = (
            f"the job store {self.path} was damaged ({error}); it was kept as {kept.name} "
            f"and the job list is rebuilt from the job folders in {self.runs_dir}"
        )
        return db

    def _copy_into_memory(self, source: sqlite3.Connection | None = None) -> sqlite3.Connection:
        """The store read into memory, for a disk too full to write it: changes stay here."""
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.row_factory = sqlite3.Row
        # If the store cannot even be read, the job folders still tell what the list shows.
        with contextlib.suppress(sqlite3.DatabaseError):
            if source is not None:
                source.backup(db)
            else:  # immutable: read without the shared-memory file a full disk cannot hold
                with contextlib.closing(
                    sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True)
                ) as file:
                    file.backup(db)
        self._migrate(db)
        self.read_only = True
        self.notice = (
            "the job store cannot be written: "
            + full_disk_sentence(self.workspace, "free space so that it can be updated")
            + "; showing the jobs as their folders say"
        )
        return db

    def keep_in_memory(self) -> None:
        """Go on from a copy in memory: the disk holding the store has filled up."""
        if not self.read_only:
            previous, self._db = self._db, self._copy_into_memory(self._db)
            previous.close()

    def reattach(self) -> bool:
        """Back to the file once its disk has room again; whether the store is writable."""
        if self.read_only and not nearly_full(self.workspace):
            with contextlib.suppress(sqlite3.DatabaseError):
                previous, self._db = self._db, self._connect()
                previous.close()
                self.read_only, self.notice = False, None
        return not self.read_only

    def _write(self, sql: str, parameters: tuple = ()) -> sqlite3.Cursor:
        try:
            return self._db.execute(sql, parameters)
        except sqlite3.OperationalError as error:
            if _is_disk_trouble(error, self.workspace):
                raise StoreUnwritable(
                    "the job store cannot be written: "
                    + full_disk_sentence(self.workspace, "free space and try again")
                ) from error
            raise

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Bring the schema up to SCHEMA_VERSION, one migration a transaction.

        The version is read again under the write lock, so two processes opening a new
        workspace at once migrate it once.
        """
        while True:
            db.execute("BEGIN IMMEDIATE")
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise RuntimeError(
                        f"{self.path} was written by a newer version of the app (schema "
                        f"{version}, this one knows {SCHEMA_VERSION})"
                    )
                if version == SCHEMA_VERSION:
                    db.execute("COMMIT")
                    return
                for statement in MIGRATIONS[version].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {version + 1}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
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
        created: float | None = None,
    ) -> Job:
        job_id = job_id or new_job_id(name)
        job = Job(
            id=job_id,
            name=name,
            kind=kind,
            status="queued",
            gpu_ids=list(gpu_ids),
            job_dir=str(self.runs_dir / job_id),
            created=time.time() if created is None else created,
            exclusive=int(exclusive),
        )
        values = {name: getattr(job, name) for name in _COLUMNS}
        values["gpu_ids"] = json.dumps(values["gpu_ids"])
        marks = ",".join("?" * len(values))
        self._write(
            f"INSERT INTO jobs ({','.join(values)}) VALUES ({marks})", tuple(values.values())
        )
        return job

    def update(self, job_id: str, **changes: Any) -> None:
        if "gpu_ids" in changes:
            changes["gpu_ids"] = json.dumps(changes["gpu_ids"])
        assignments = ", ".join(f"{name} = ?" for name in changes)
        self._write(f"UPDATE jobs SET {assignments} WHERE id = ?", (*changes.values(), job_id))

    def transition(self, job_id: str, from_statuses: tuple[str, ...], **changes: Any) -> bool:
        """Apply `changes` only if the job is still in one of `from_statuses` (atomic claim)."""
        assignments = ", ".join(f"{name} = ?" for name in changes)
        marks = ",".join("?" * len(from_statuses))
        cursor = self._write(
            f"UPDATE jobs SET {assignments} WHERE id = ? AND status IN ({marks})",
            (*changes.values(), job_id, *from_statuses),
        )
        return cursor.rowcount == 1

    def delete(self, job_id: str) -> None:
        self._write("DELETE FROM jobs WHERE id = ?", (job_id,))

    def ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT id FROM jobs")}
