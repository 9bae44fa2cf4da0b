"""Starting, watching, stopping and resuming training jobs as detached processes.

A job runs as `sh -c '<accelerate launch ... -m core.train --config spec.json>; record exit'` in
a session of its own, with its output going to `<job dir>/train.log`: it is nobody's pipe, so it
outlives the app that started it, a browser refresh, an app restart or an app crash. The store
records its pid and the process's start time before `launch` returns, so a recycled pid is never
taken for ours.

`poll()` is the heartbeat (the app's timer, every CLI command, and the tick a finished job runs):
it reconciles each active job with reality, escalates stops that take too long, and starts what
the queue allows.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from core.config import make_config
from core.events import FINAL_KINDS
from core.files import write_text_atomic
from core.models.source import is_hub_id
from jobs import queue
from jobs.checks import output_folder
from jobs.diagnose import diagnose
from jobs.events import EventTail
from jobs.previews import worker_is_idle
from jobs.spec import SPEC_FILE, JobSpec
from jobs.store import ACTIVE, FINISHED, Job, JobStore

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_FILE = "train.log"
EXIT_FILE = "exit_code"
STARTING_TIMEOUT = 120.0  # a claimed job with no process after this long failed to start

# The wrapper keeps the exit status after the app that started the job is gone, then lets the
# queue start whatever was waiting for this job's GPUs. The trap makes the shell wait for the
# trainer's own graceful stop instead of dying first.
_WRAPPER = r"""
trap ':' INT TERM
"$@"
code=$?
printf '%s\n' "$code" > "$COGVIDEOX_JOB_DIR/.exit_code.partial"
mv "$COGVIDEOX_JOB_DIR/.exit_code.partial" "$COGVIDEOX_JOB_DIR/exit_code"
"$COGVIDEOX_JOB_PYTHON" -m jobs --workspace "$COGVIDEOX_JOB_WORKSPACE" tick >/dev/null 2>&1 &
exit "$code"
"""


class JobError(Exception):
    """A job command that cannot be carried out; the message says why."""


def _absolute(path: str | None) -> str | None:
    if not path:
        return path
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.exists() or "/" in path or "\\" in path else path


class Runner:
    def __init__(self, workspace: str | Path, stop_grace: float = 600.0, kill_grace: float = 60.0):
        """`stop_grace`: seconds a stopping trainer gets to checkpoint before SIGTERM;
        `kill_grace`: seconds more before the whole job is killed."""
        self.store = JobStore(workspace)
        self.workspace = self.store.workspace
        self.stop_grace = stop_grace
        self.kill_grace = kill_grace
        self._children: dict[int, subprocess.Popen] = {}
        self._private_env: dict[str, dict[str, str]] = {}  # per job, kept in memory only

    # ---- submitting ------------------------------------------------------------------------

    def submit(self, spec: JobSpec, env: dict[str, str] | None = None) -> Job:
        """Queue a job (its spec.json written first) and start it if its GPUs are free.

        `env` adds environment variables for this job's process only (a Hub token for a push):
        they are never written to the spec, the store or a log.
        """
        output = output_folder(spec, self.store.runs_dir)  # a folder the spec names, or None
        if output is not None:
            output.mkdir(parents=True, exist_ok=True)
        if spec.kind == "train":
            spec = self.resolve_paths(spec)
        job = self.store.add(spec.name, spec.kind, spec.gpu_ids, exclusive=spec.exclusive)
        job_dir = Path(job.job_dir)
        if output is not None:  # the job folder points to it: every reader finds the run there
            job_dir.parent.mkdir(parents=True, exist_ok=True)
            job_dir.symlink_to(output, target_is_directory=True)
        job_dir.mkdir(parents=True, exist_ok=True)
        if spec.kind == "train":
            train = spec.train.model_copy(update={"output_dir": str(output or job_dir)})
            spec = spec.model_copy(update={"train": train})
        write_text_atomic(job_dir / SPEC_FILE, spec.model_dump_json(indent=2))
        if env:
            self._private_env[job.id] = dict(env)
        self.schedule()
        return self.store.get(job.id)

    def resolve_paths(self, spec: JobSpec) -> JobSpec:
        """Paths made absolute (the job runs in its own folder) and the workspace's cache."""
        train = spec.train
        updates = {
            "data_root": _absolute(train.data_root),
            # A Hub id stays one (it names no folder here; the trainer downloads it).
            "pretrained_model_name_or_path": train.pretrained_model_name_or_path
            if is_hub_id(train.pretrained_model_name_or_path)
            else _absolute(train.pretrained_model_name_or_path),
            "cache_dir": _absolute(train.cache_dir) or str(self.workspace / "cache"),
        }
        config = make_config({**train.model_dump(mode="json"), **updates})
        return spec.model_copy(update={"train": config})

    def spec(self, job: Job) -> JobSpec:
        return JobSpec.model_validate_json((Path(job.job_dir) / SPEC_FILE).read_text())

    # ---- the heartbeat ---------------------------------------------------------------------

    def poll(self) -> None:
        self.reconcile()
        self.schedule()

    def schedule(self) -> list[Job]:
        """Start every queued job the queue allows; returns those started."""
        queued = list(reversed(self.store.list(("queued",))))  # oldest first
        if not queued:
            return []
        active = self.store.list(ACTIVE)
        plan = queue.plan(queued, active, idle=worker_is_idle)
        for worker in plan.step_aside:  # an idle preview worker gives its GPUs to the queue
            self.stop(worker.id)
        for job in queued:  # what each job waits for, shown by the page and `jobs show`
            reason = plan.reasons.get(job.id)
            if reason and reason != job.reason:
                self.store.transition(job.id, ("queued",), reason=reason)
        started = []
        for job in plan.ready:
            if self.store.transition(job.id, ("queued",), status="starting"):
                started.append(self._launch(self.store.get(job.id)))
        return started

    def _launch(self, job: Job) -> Job:
        job_dir = Path(job.job_dir)
        spec = self.spec(job)
        argv = spec.to_argv(job_dir / SPEC_FILE)
        if job.resume_requested and spec.kind == "train":
            argv += ["--resume_from_checkpoint", "latest"]
        (job_dir / EXIT_FILE).unlink(missing_ok=True)
        events = job_dir / "events.jsonl"
        offset = events.stat().st_size if events.exists() else 0
        env = dict(os.environ)
        env.update(
            {
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])
                ),
                "PYTHONUNBUFFERED": "1",
                "COGVIDEOX_JOB_DIR": str(job_dir),
                "COGVIDEOX_JOB_PYTHON": sys.executable,
                "COGVIDEOX_JOB_WORKSPACE": str(self.workspace),
            }
        )
        if spec.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpu_ids))
        env.update(spec.launch_env())
        env.update(self._private_env.pop(job.id, {}))
        with open(job_dir / LOG_FILE, "ab") as log:
            log.write(f"\n$ {spec.show_command(job_dir / SPEC_FILE)}\n".encode())
            log.flush()
            process = subprocess.Popen(
                ["/bin/sh", "-c", _WRAPPER, "cogvideox-job", *argv],
                cwd=job_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[process.pid] = process
        try:
            created = psutil.Process(process.pid).create_time()
        except psutil.NoSuchProcess:
            created = time.time()
        self.store.update(
            job.id,
            status="running",
            pid=process.pid,
            pgid=process.pid,
            proc_start=created,
            started=time.time(),
            ended=None,
            exit_code=None,
            reason=None,
            suggestion=None,
            stop_requested=None,
            resume_requested=0,
            attempts=job.attempts + 1,
            events_offset=offset,
            attempt_offset=offset,
        )
        return self.store.get(job.id)

    def reconcile(self) -> None:
        """Bring every active job's record in line with its process and its events."""
        for job in self.store.list(ACTIVE):
            self._reconcile(job)

    def _reconcile(self, job: Job) -> None:
        if job.status == "starting" and job.pid is None:
            if time.time() - job.created > STARTING_TIMEOUT and not job.started:
                self.store.transition(
                    job.id,
                    ("starting",),
                    status="failed",
                    ended=time.time(),
                    reason="the job could not be started",
                )
            return
        tail = EventTail(Path(job.job_dir) / "events.jsonl", job.events_offset)
        events = tail.read_new()
        changes: dict = {"events_offset": tail.complete_offset}
        steps = [e for e in events if e.kind == "step"]
        if steps:
            changes.update(last_step=steps[-1].step, total_steps=steps[-1].total_steps)
        self.store.update(job.id, **changes)
        exit_code = self._exit_code(job)
        if exit_code is None and self._alive(job):
            if job.status == "stopping":
                self._escalate(job)
            return
        final = _attempt_final_event(Path(job.job_dir), job.attempt_offset)
        self._finish(self.store.get(job.id), final, exit_code)

    def _finish(self, job: Job, final, exit_code: int | None) -> None:
        ended = time.time()
        if job.kind != "train":  # preview workers and pushes report through their own events
            status, reason, suggestion = _service_outcome(job, exit_code, self._log_tail(job))
        elif final is not None and final.kind == "done":
            status, reason, suggestion = "succeeded", None, None
        elif final is not None and final.kind == "stopped":
            status = "stopped"
            reason = (
                f"stopped at step {final.step}; resume continues from {final.checkpoint}"
                if final.checkpoint
                else f"stopped at step {final.step}"
            )
            suggestion = None
        elif job.stop_requested:
            status, suggestion = "stopped", None
            reason = (
                "stopped before training began"
                if not job.last_step
                else f"stopped by force at step {job.last_step}: it did not stop in time"
            )
        else:
            message = final.message if final is not None else None
            found = diagnose(exit_code, message, self._log_tail(job))
            status, reason, suggestion = found.status, found.reason, found.suggestion
        # The wrapper has ended; a rank its launcher left behind must not run on unwatched.
        self._signal_group(job, signal.SIGKILL)
        self.store.transition(
            job.id,
            ACTIVE,
            status=status,
            reason=reason,
            suggestion=suggestion,
            exit_code=exit_code,
            ended=ended,
        )

    # ---- liveness --------------------------------------------------------------------------

    def _exit_code(self, job: Job) -> int | None:
        """The job's exit status once it has ended (from its wrapper, or our own child)."""
        child = self._children.get(job.pid) if job.pid else None
        if child is not None and child.poll() is not None:
            self._children.pop(job.pid, None)
        exit_file = Path(job.job_dir) / EXIT_FILE
        if exit_file.is_file():
            try:
                return int(exit_file.read_text().strip())
            except ValueError:
                return None
        if child is not None and child.returncode is not None:
            return child.returncode
        return None

    def _alive(self, job: Job) -> bool:
        """Whether any process of the job still runs (the wrapper, or an orphaned trainer)."""
        if job.pid is None:
            return job.status == "starting"
        try:
            leader = psutil.Process(job.pid)
            if (
                abs(leader.create_time() - (job.proc_start or 0)) < 1.0
                and leader.status() != psutil.STATUS_ZOMBIE
            ):
                return True
        except psutil.NoSuchProcess:
            pass
        return bool(self._job_processes(job))

    @staticmethod
    def _job_processes(job: Job) -> list[psutil.Process]:
        """Every live process of the job, found by the job folder in its environment.

        Process groups are not enough: torchrun starts each rank in a session of its own, and
        a rank whose launcher died is adopted by init; the environment goes wherever they go.
        """
        found = []
        for process in psutil.process_iter(["pid", "status"]):
            if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            try:
                if process.environ().get("COGVIDEOX_JOB_DIR") == job.job_dir:
                    found.append(process)
            except psutil.Error:
                continue
        return found

    def _trainers(self, job: Job) -> list[psutil.Process]:
        """The trainer processes of a job (every rank), not the launcher or the wrapper."""
        found = []
        for process in self._job_processes(job):
            try:
                cmdline = process.cmdline()
            except psutil.Error:
                continue
            if _runs_module(cmdline, "core.train"):
                found.append(process)
        return found

    # ---- stop, resume, delete --------------------------------------------------------------

    def stop(self, job_id: str) -> Job:
        """Cancel a queued job, or ask a running one to checkpoint and stop."""
        job = self._require(job_id)
        if job.status == "queued":
            self.store.transition(
                job.id,
                ("queued",),
                status="stopped",
                ended=time.time(),
                reason="cancelled before it started",
            )
        elif job.status in ("starting", "running"):
            self.store.transition(
                job.id, ("starting", "running"), status="stopping", stop_requested=time.time()
            )
            self._signal_trainers(self.store.get(job.id), signal.SIGINT)
        elif job.status == "stopping":
            pass  # already asked; the heartbeat escalates if it takes too long
        else:
            raise JobError(f"job {job.id} has already ended ({job.status})")
        return self.store.get(job.id)

    def _signal_trainers(self, job: Job, signum: int) -> None:
        trainers = self._trainers(job)
        if not trainers:  # not started yet: the launcher takes the signal and exits
            self._signal_group(job, signum)
        for process in trainers:
            try:
                process.send_signal(signum)
            except psutil.Error:
                continue

    def _signal_group(self, job: Job, signum: int) -> None:
        """Signal the job's process group and every process that left it."""
        if job.pgid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(job.pgid, signum)
        for process in self._job_processes(job):
            with contextlib.suppress(psutil.Error):
                process.send_signal(signum)

    def _escalate(self, job: Job) -> None:
        waited = time.time() - (job.stop_requested or time.time())
        if waited > self.stop_grace + self.kill_grace:
            self._signal_group(job, signal.SIGKILL)
        elif waited > self.stop_grace:
            self._signal_trainers(job, signal.SIGTERM)

    def wait(
        self,
        job_id: str,
        timeout: float,
        statuses: tuple[str, ...] = FINISHED,
        interval: float = 0.2,
    ) -> Job:
        """Poll until the job reaches one of `statuses` or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            job = self._require(job_id)
            if job.status in statuses or time.monotonic() >= deadline:
                return job
            time.sleep(interval)

    def resume(self, job_id: str) -> Job:
        """Queue a stopped, failed or interrupted job again; it continues from its checkpoint."""
        job = self._require(job_id)
        if not self.store.transition(
            job.id,
            ("stopped", "failed", "interrupted"),
            status="queued",
            resume_requested=1,
            reason=None,
            suggestion=None,
            exit_code=None,
            ended=None,
            stop_requested=None,
        ):
            raise JobError(
                f"job {job.id} is {job.status}; only a stopped, failed or "
                "interrupted job can be resumed"
            )
        self.schedule()
        return self.store.get(job.id)

    def delete(self, job_id: str, confirm: bool = False) -> None:
        job = self._require(job_id)
        if job.status not in FINISHED:
            raise JobError(f"job {job.id} is {job.status}; stop it before deleting it")
        job_dir = Path(job.job_dir)
        if not confirm:
            what = (
                f"its record; the run's files in {job_dir.resolve()} stay"
                if job_dir.is_symlink()
                else f"{job.job_dir} and everything in it"
            )
            raise JobError(f"deleting job {job.id} removes {what}; confirm to go ahead")
        if job_dir.is_symlink():  # an output_dir the spec named is the user's: only the link goes
            job_dir.unlink()
        elif job_dir.is_dir() and job_dir.is_relative_to(self.store.runs_dir):
            shutil.rmtree(job_dir)
        self.store.delete(job.id)

    def _require(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobError(f"there is no job {job_id} in {self.workspace}")
        return job

    def _log_tail(self, job: Job, size: int = 8192) -> str:
        return log_tail(Path(job.job_dir) / LOG_FILE, size)


def _runs_module(cmdline: list[str], module: str) -> bool:
    """Whether a command line is `python [-flags] -m module ...` itself, not a launcher
    (accelerate, torchrun) that was given the module to start."""
    for position, argument in enumerate(cmdline[1:], start=1):
        if argument == "-m":
            return cmdline[position + 1 : position + 2] == [module]
        if not argument.startswith("-"):
            return False  # a script: the launcher's own program
    return False


def log_tail(path: Path, size: int = 8192) -> str:
    """The last `size` bytes of a log, as text."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""


def _service_outcome(job: Job, exit_code: int | None, log_tail: str):
    """How a preview worker or a push ended: its exit status, and its last message."""
    if exit_code == 0:
        return "succeeded", None, None
    if job.stop_requested:
        return "stopped", "stopped on request", None
    message = None
    for event in EventTail(Path(job.job_dir) / "events.jsonl", job.attempt_offset).read_new():
        if getattr(event, "message", None):
            message = event.message
    found = diagnose(exit_code, message, log_tail)
    return found.status, found.reason, found.suggestion


def _attempt_final_event(job_dir: Path, attempt_offset: int):
    """The current attempt's done, failed or stopped event, if it wrote one."""
    final = None
    for event in EventTail(job_dir / "events.jsonl", attempt_offset).read_new():
        if event.kind in FINAL_KINDS:
            final = event
    return final
