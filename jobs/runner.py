"""Starting, watching, stopping and resuming training jobs as detached processes.

A job runs as `sh -c '<accelerate launch ... -m core.train --config spec.json>; record exit'` in
a session of its own, with its output going to `<job dir>/train.log` (jobs/processes.py): it is
nobody's pipe, so it outlives the app that started it, a browser refresh, an app restart or an
app crash. A CPU run may begin in a trainer the app started before Start (jobs/standby.py). The
records its pid and the process's start time before `launch` returns, so a recycled pid is never
taken for ours.

`poll()` is the heartbeat (the app's timer, every CLI command, and the tick a finished job runs):
it reconciles each active job with reality, escalates stops that take too long, and starts what
the queue allows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from core.config import make_config
from core.confine import absolute_model_or_path
from core.diskspace import FULL_ERRNOS, full_disk_sentence, nearly_full
from core.events import EVENTS_FILE, FINAL_KINDS, EventWriter, StoppedEvent
from core.files import write_text_atomic
from jobs import queue
from jobs import standby as standby_trainer
from jobs.checks import output_folder
from jobs.diagnose import diagnose
from jobs.events import EventTail
from jobs.previews import worker_is_idle
from jobs.processes import (
    EXIT_FILE,
    LOG_FILE,
    NO_TICK_FILE,
    clear_exit_code,
    default_stop_signals,
    job_env,
    job_processes,
    log_tail,
    read_exit_code,
    spawn,
    trainers,
)
from jobs.spec import PREPARATION_KINDS, SPEC_FILE, JobSpec
from jobs.store import ACTIVE, FINISHED, Job, JobStore, StoreUnwritable

logger = logging.getLogger("jobs.runner")
__all__ = ["EXIT_FILE", "LOG_FILE", "JobError", "Runner", "default_stop_signals", "log_tail"]

STEP_ASIDE_WAIT = 5.0  # seconds an idle preview worker gets to end when the app waits for it
STARTING_TIMEOUT = 120.0  # a claimed job with no process after this long failed to start
_COMMAND_LINE = "\n$ "  # what the runner writes to train.log before each attempt's command


class JobError(Exception):
    """A job command that cannot be carried out; the message says why."""


class Runner:
    def __init__(
        self,
        workspace: str | Path,
        stop_grace: float = 600.0,
        kill_grace: float = 60.0,
        on_warning: Callable[[str], None] | None = None,
        standby: bool = False,
    ):
        """`stop_grace`: seconds a stopping trainer gets to checkpoint before SIGTERM;
        `kill_grace`: seconds more before the whole job is killed; `on_warning`: where to say
        what is wrong with the store (default: the log); `standby`: keep a trainer started
        ahead of the next CPU run when asked (`warm_standby`; a long-lived runner, the app's)."""
        self.store = JobStore(workspace)
        self.workspace = self.store.workspace
        self.stop_grace = stop_grace
        self.kill_grace = kill_grace
        self._children: dict[int, subprocess.Popen] = {}
        self._private_env: dict[str, dict[str, str]] = {}  # per job, kept in memory only
        self._standbys = standby_trainer.Keeper(self.workspace) if standby else None
        self._warned: str | None = None
        self._on_warning = on_warning or (lambda message: logger.warning("warning: %s", message))
        from jobs.recovery import adopt_unindexed_folders

        adopted = adopt_unindexed_folders(self)
        notice = self.store.notice
        if adopted:
            jobs = f"{len(adopted)} job{'s' * (len(adopted) != 1)}"
            notice = (
                f"{notice}; {jobs} read back from their folders"
                if notice
                else f"the job list lacked {jobs} found in {self.store.runs_dir}; "
                "they were read back from their folders"
            )
        if notice:
            self.warn(notice)

    def warn(self, message: str) -> None:
        """Say something wrong about the store once per process (stderr, the app's log)."""
        if message != self._warned:
            self._warned = message
            self._on_warning(message)

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """Around a command that changes jobs: a store that cannot be written is one sentence."""
        if self.store.read_only:
            raise JobError(self.store.notice)
        try:
            yield
        except StoreUnwritable as error:
            raise JobError(str(error)) from None
        except OSError as error:
            if error.errno not in FULL_ERRNOS:
                raise
            raise JobError(full_disk_sentence(self.workspace, "free space and try again")) from None

    # ---- submitting ------------------------------------------------------------------------

    def submit(self, spec: JobSpec, env: dict[str, str] | None = None) -> Job:
        """Queue a job (its spec.json written first) and start it if its GPUs are free.

        `env` adds environment variables for this job's process only (a Hub token for a push):
        they are never written to the spec, the store or a log.
        """
        output = output_folder(spec, self.store.runs_dir)  # a folder the spec names, or None
        if spec.kind == "train":
            spec = self.resolve_paths(spec)
        with self._changing():
            if output is not None:
                output.mkdir(parents=True, exist_ok=True)
            job = self.store.add(spec.name, spec.kind, spec.gpu_ids, exclusive=spec.exclusive)
            job_dir = Path(job.job_dir)
            try:
                if output is not None:  # the job folder points to it: readers find the run there
                    job_dir.parent.mkdir(parents=True, exist_ok=True)
                    job_dir.symlink_to(output, target_is_directory=True)
                job_dir.mkdir(parents=True, exist_ok=True)
                if spec.kind == "train":
                    train = spec.train.model_copy(update={"output_dir": str(output or job_dir)})
                    spec = spec.model_copy(update={"train": train})
                write_text_atomic(job_dir / SPEC_FILE, spec.model_dump_json(indent=2))
            except OSError:
                self.store.delete(job.id)  # no half-made job: neither a row nor a folder
                if job_dir.is_symlink():
                    job_dir.unlink()
                else:
                    shutil.rmtree(job_dir, ignore_errors=True)
                raise
        if env:
            self._private_env[job.id] = dict(env)
        self.schedule()
        return self.store.get(job.id)

    def find_duplicate(self, spec: JobSpec) -> Job | None:
        """A queued or running training job with the same name and settings, if there is one."""
        if spec.kind != "train":
            return None
        mine = self.resolve_paths(spec).train.model_copy(update={"output_dir": ""})
        for job in self.store.list(("queued", *ACTIVE)):
            if job.kind != "train" or job.name != spec.name:
                continue
            with contextlib.suppress(OSError, ValueError):  # a folder being written or removed
                earlier = self.spec(job).train.model_copy(update={"output_dir": ""})
                if earlier == mine:
                    return job
        return None

    def resolve_paths(self, spec: JobSpec) -> JobSpec:
        """Paths made absolute (the job runs in its own folder) and the workspace's cache."""
        train = spec.train
        updates = {
            "data_root": absolute_model_or_path(train.data_root),
            "pretrained_model_name_or_path": absolute_model_or_path(
                train.pretrained_model_name_or_path
            ),
            "cache_dir": absolute_model_or_path(train.cache_dir) or str(self.workspace / "cache"),
        }
        config = make_config({**train.model_dump(mode="json"), **updates})
        return spec.model_copy(update={"train": config})

    def spec(self, job: Job) -> JobSpec:
        return JobSpec.model_validate_json((Path(job.job_dir) / SPEC_FILE).read_text())

    # ---- the heartbeat ---------------------------------------------------------------------

    def poll(self) -> None:
        """Reconcile and schedule. On a disk too full to write the store, say so and go on
        from a copy in memory (the job folders tell what happened), until there is room."""
        self.store.reattach()
        try:
            self.reconcile()
            self.schedule()
            self._keep_standby()
        except StoreUnwritable as error:
            self.warn(str(error))
            self.store.keep_in_memory()
            self.reconcile()

    def schedule(self) -> list[Job]:
        """Start every queued job the queue allows; returns those started."""
        if self.store.read_only:  # a job whose record cannot be kept is not started
            return []
        queued = list(reversed(self.store.list(("queued",))))  # oldest first
        if not queued:
            return []
        active = self.store.list(ACTIVE)
        plan = queue.plan(queued, active, idle=worker_is_idle)
        if plan.step_aside and self._standbys is not None and self._standbys.waiting():
            # A finished worker's tick would start what it held in a fresh process: this runner
            # waits for the workers itself, so that the run starts in the standby.
            self._step_aside_and_wait(plan.step_aside)
            return self.schedule()
        for worker in plan.step_aside:  # an idle preview worker gives its GPUs to the queue
            self.stop(worker.id)
        for job in queued:  # what each job waits for, shown by the page and `jobs show`
            reason = plan.reasons.get(job.id)
            if reason and reason != job.reason:
                self.store.transition(job.id, ("queued",), reason=reason)
        started = []
        for job in plan.ready:
            if self.store.transition(job.id, ("queued",), status="starting"):
                try:
                    started.append(self._launch(self.store.get(job.id)))
                except OSError as error:  # its log or folder cannot be written
                    if error.errno not in FULL_ERRNOS:
                        raise
                    self.store.transition(
                        job.id,
                        ("starting",),
                        status="failed",
                        ended=time.time(),
                        reason=full_disk_sentence(job.job_dir),
                    )
        return started

    def _step_aside_and_wait(self, workers: list[Job]) -> None:
        """Stop idle preview workers, their ticks held back, and wait (a few seconds at most)
        until they have ended. One that takes longer gets its tick back and ends as usual."""
        for worker in workers:
            (Path(worker.job_dir) / NO_TICK_FILE).touch()
            self.stop(worker.id)
        deadline = time.monotonic() + STEP_ASIDE_WAIT
        while time.monotonic() < deadline and any(self._alive(w) for w in workers):
            time.sleep(0.05)
        for worker in workers:
            (Path(worker.job_dir) / NO_TICK_FILE).unlink(missing_ok=True)
            self._reconcile(self.store.get(worker.id))

    def _launch(self, job: Job) -> Job:
        job_dir = Path(job.job_dir)
        spec = self.spec(job)
        argv = spec.to_argv(job_dir / SPEC_FILE)
        if job.resume_requested and spec.kind == "train":
            argv += ["--resume_from_checkpoint", "latest"]
        clear_exit_code(job_dir)
        events = job_dir / "events.jsonl"
        offset = events.stat().st_size if events.exists() else 0
        env = job_env(self.workspace, job_dir, spec.launch_env())
        if spec.gpu_ids:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, spec.gpu_ids))
        env.update(self._private_env.pop(job.id, {}))
        with open(job_dir / LOG_FILE, "ab") as log:
            log.write(f"{_COMMAND_LINE}{spec.show_command(job_dir / SPEC_FILE)}\n".encode())
            log.flush()
            process = None
            if self._standbys is not None:
                process = self._standbys.take(spec, job_dir, argv, env)
            if process is None:
                process = spawn(argv, job_dir, env, log)
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

    # ---- a trainer started ahead of Start (jobs/standby.py) ---------------------------------

    def warm_standby(self) -> None:
        """From now on, keep a trainer waiting for the next CPU run whenever no run is on (a
        run would lose CPU to the standby's imports); the heartbeat starts it again after a run
        took it. Nothing for a runner that keeps no standby."""
        if self._standbys is not None:
            self._standbys.want()
            self._keep_standby()

    def _keep_standby(self) -> None:
        if self._standbys is not None:
            self._standbys.keep(lambda: any(job.kind == "train" for job in self.store.list(ACTIVE)))

    def close_standby(self) -> None:
        """End the waiting standby, and keep none from now on."""
        if self._standbys is not None:
            self._standbys.close()

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
        elif job.kind in PREPARATION_KINDS:  # clips done of clips to do
            progress = [e for e in events if e.kind == "progress"]
            if progress:
                changes.update(last_step=progress[-1].done, total_steps=progress[-1].total)
        self.store.update(job.id, **changes)
        exit_code = self._exit_code(job)
        if exit_code is None and self._alive(job):
            if job.status == "stopping":
                self._escalate(job)
            return
        final = _attempt_final_event(Path(job.job_dir), job.attempt_offset)
        current = self.store.get(job.id)
        if current.attempts != job.attempts or current.status not in ACTIVE:
            # Another process (a finished job's tick, the app, a CLI command) recorded this
            # attempt's end while this one looked, and may have started the next attempt: its
            # processes carry the same marker and must not be killed for the last one's end.
            return
        self._finish(current, final, exit_code)

    def _finish(self, job: Job, final, exit_code: int | None, ended: float | None = None) -> None:
        """Record how the job's attempt ended, and kill whatever of it is left."""
        if getattr(final, "exit_code", None) is not None:
            # The trainer's own status: accelerate's launcher turns any failure into 1.
            exit_code = final.exit_code
        status, reason, suggestion = self._outcome(job, final, exit_code)
        # The wrapper has ended; a rank its launcher left behind must not run on unwatched.
        self._signal_group(job, signal.SIGKILL)
        self.store.transition(
            job.id,
            ACTIVE,
            status=status,
            reason=reason,
            suggestion=suggestion,
            exit_code=exit_code,
            ended=time.time() if ended is None else ended,
        )

    def _outcome(
        self, job: Job, final, exit_code: int | None
    ) -> tuple[str, str | None, str | None]:
        """(status, reason, suggestion) of an attempt that has ended."""
        if final is not None and final.kind == "stopped" and final.message:
            return "stopped", final.message, None  # cancelled before it started, of any kind
        if job.kind != "train":  # preview workers and pushes report through their own events
            return _service_outcome(job, exit_code, self._log_tail(job))
        if final is not None and final.kind == "done":
            return "succeeded", None, None
        if final is not None and final.kind == "stopped":
            if final.checkpoint:
                return (
                    "stopped",
                    f"stopped at step {final.step}; resume continues from {final.checkpoint}",
                    None,
                )
            return "stopped", f"stopped at step {final.step}", None
        if job.stop_requested and final is None:  # it did not get to say how it ended
            if not job.last_step:
                return "stopped", "stopped before training began", None
            return (
                "stopped",
                f"stopped by force at step {job.last_step}: it did not stop in time",
                None,
            )
        message = final.message if final is not None else None
        full_disk = None
        if nearly_full(job.job_dir):
            full_disk = full_disk_sentence(job.job_dir)
        found = diagnose(exit_code, message, self._log_tail(job), full_disk)
        return found.status, found.reason, found.suggestion

    # ---- liveness --------------------------------------------------------------------------

    def _exit_code(self, job: Job) -> int | None:
        """The job's exit status once it has ended (from its wrapper, or our own child)."""
        child = self._children.get(job.pid) if job.pid else None
        if child is not None and child.poll() is not None:
            self._children.pop(job.pid, None)
        recorded = read_exit_code(Path(job.job_dir))
        if recorded is not None:
            return recorded
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
        return job_processes(job.job_dir)

    @staticmethod
    def _trainers(job: Job) -> list[psutil.Process]:
        return trainers(job.job_dir)

    # ---- stop, resume, delete --------------------------------------------------------------

    def stop(self, job_id: str) -> Job:
        """Cancel a queued job, or ask a running one to checkpoint and stop."""
        job = self._require(job_id)
        if job.status == "queued":
            reason = "cancelled before it started"
            with self._changing():
                if self.store.transition(
                    job.id, ("queued",), status="stopped", ended=time.time(), reason=reason
                ):
                    # The folder is the record: it must say the job was cancelled, not waiting.
                    writer = EventWriter(job.job_dir, reserve=False)
                    try:
                        writer.emit(StoppedEvent(step=job.last_step, message=reason))
                    finally:
                        writer.close()
        elif job.status in ("starting", "running"):
            try:
                self.store.transition(
                    job.id, ("starting", "running"), status="stopping", stop_requested=time.time()
                )
            except StoreUnwritable as error:
                self.warn(str(error))  # the signal is what stops it; its events tell the rest
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
        with self._changing():
            resumed = self.store.transition(
                job.id,
                ("stopped", "failed", "interrupted"),
                status="queued",
                resume_requested=1,
                reason=None,
                suggestion=None,
                exit_code=None,
                ended=None,
                stop_requested=None,
            )
        if not resumed:
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
        with self._changing():
            if job_dir.is_symlink():  # an output_dir the spec named is the user's: the link goes
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
        """The end of the log of the job's latest attempt (each begins with its `$ command`)."""
        text = log_tail(Path(job.job_dir) / LOG_FILE, size)
        start = text.rfind(_COMMAND_LINE)
        return text[start + 1 :] if start >= 0 else text


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
    for event in EventTail(job_dir / EVENTS_FILE, attempt_offset).read_new():
        if event.kind in FINAL_KINDS:
            final = event
    return final
