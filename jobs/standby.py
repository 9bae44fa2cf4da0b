"""A trainer process started before Start is pressed, so that a CPU run's first step comes sooner.

Before a run reads anything, its trainer imports torch, diffusers, transformers, accelerate and
peft: about 6 s on a 2-core machine, most of the wait between Start and the CPU demo's first
loss point. The app starts one trainer ahead of time, exactly as the runner starts a job (the
same wrapper, environment and session of its own), with a folder under `<workspace>/standby/`
as its job folder marker. It imports everything and waits (core/standby.py).

Start hands it a job (`hand_over`): the runner claims it by renaming its `open` file (the trainer
renames the same file to close itself when its app is gone or it has waited too long, so only
one of them wins), writes the job's folder and arguments to `job.json`, and turns the standby
folder's path into a link to the job folder. From then on the job is like any other: the wrapper
records the exit status through the link, and the job's processes are found by their marker,
which leads to the job folder once links are resolved. The trainer moves into the job folder,
writes to its train.log and runs the job's arguments.

Only a run that is a single trainer process on the CPU (the CPU demo, any CPU run) starts this
way: a GPU run goes through `accelerate launch`, whose launcher starts the trainer itself. The
standby's environment is the job's own, so a job whose environment differs (a token, another
precision, an environment variable changed since) starts a fresh process instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from core.files import write_text_atomic
from core.standby import CLAIMED_FILE, CLOSED_FILE, JOB_FILE, OPEN_FILE
from jobs.processes import LOG_FILE, MARKER, job_env, log_tail, marked_processes, spawn
from jobs.spec import JobSpec, single_cpu_process_env

logger = logging.getLogger("jobs.standby")

STANDBY_DIR = "standby"
IDLE_TIMEOUT = 1800.0  # seconds a standby waits for a job before it frees its memory
TRAINER = ("-m", "core.train")


@dataclass
class Standby:
    process: subprocess.Popen
    folder: Path
    env: dict[str, str]

    def waiting(self) -> bool:
        return self.process.poll() is None and (self.folder / OPEN_FILE).is_file()

    def fits(self, env: dict[str, str]) -> bool:
        """Whether a job with this environment may run in this process: the same environment
        apart from the job folder's marker."""

        def without_marker(values: dict[str, str]) -> dict[str, str]:
            return {key: value for key, value in values.items() if key != MARKER}

        return without_marker(env) == without_marker(self.env)


def new_folder(workspace: Path) -> Path:
    """A fresh standby folder, open to be claimed."""
    folder = workspace / STANDBY_DIR / secrets.token_hex(6)
    folder.mkdir(parents=True)
    (folder / OPEN_FILE).touch()
    return folder


def standby_argv(python: str, owner: int) -> list[str]:
    """The standby's command: the trainer module, waiting for a job while `owner` (the app's
    process) lives."""
    return [
        python,
        *TRAINER,
        "--standby",
        "--owner",
        str(owner),
        "--idle-timeout",
        str(IDLE_TIMEOUT),
    ]


def trainer_arguments(argv: list[str], python: str) -> list[str] | None:
    """The trainer's own arguments in a job's command, when that command is the interpreter
    running the trainer module (what a standby can take over); None otherwise."""
    head = [python, *TRAINER]
    return argv[len(head) :] if argv[: len(head)] == head else None


def hand_over(standby: Standby, job_dir: Path, arguments: list[str]) -> bool:
    """Give the job to the standby; False if it cannot take it (it had closed itself, or this
    file system has no links): start a fresh process then."""
    folder = standby.folder
    try:
        os.rename(folder / OPEN_FILE, folder / CLAIMED_FILE)
    except FileNotFoundError:
        return False
    taken = folder.with_name(f"{folder.name}.taken")
    try:
        # The folder's path becomes the job folder for the standby's marker and its wrapper;
        # the trainer reads job.json from its working folder, whatever it is named now.
        os.rename(folder, taken)
        os.symlink(job_dir, folder)
    except OSError:
        with contextlib.suppress(OSError):
            os.rename(taken, folder)
        close(standby, force=True)
        return False
    job = {"job_dir": str(job_dir), "argv": arguments}
    try:
        write_text_atomic(taken / JOB_FILE, json.dumps(job))
    except OSError:  # a full disk: the job fails saying so; the standby records nothing there
        folder.unlink()
        close(standby, force=True)
        raise
    return True


def close(standby: Standby, force: bool = False) -> None:
    """End a standby that no job took (one that became a job is left alone, unless `force`:
    one that lost its folder)."""
    try:
        os.rename(standby.folder / OPEN_FILE, standby.folder / CLOSED_FILE)
    except FileNotFoundError:
        if not force:
            return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(standby.process.pid, signal.SIGKILL)
    standby.process.wait()
    shutil.rmtree(standby.folder, ignore_errors=True)


def clear_unused(workspace: Path) -> None:
    """Remove what standbys left behind: the folders of those that closed or died, and the
    links of those that became jobs once no process of the job is left (the wrapper records
    the exit status through the link)."""
    root = workspace / STANDBY_DIR
    if not root.is_dir():
        return
    in_use = {Path(marker).name for _, marker in marked_processes() if Path(marker).parent == root}
    for entry in root.iterdir():
        name = entry.name.removesuffix(".taken")
        if name in in_use:
            continue
        if entry.is_symlink():
            entry.unlink(missing_ok=True)
        elif entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)


class Keeper:
    """A runner's standby: at most one waits, made while it is wanted and no run is on."""

    def __init__(self, workspace: Path):
        self.workspace = workspace
        self.wanted = False
        self.standby: Standby | None = None

    def waiting(self) -> bool:
        return self.standby is not None and self.standby.waiting()

    def want(self) -> None:
        self._forget_ended()
        self.wanted = True

    def keep(self, run_is_on: Callable[[], bool]) -> None:
        """Start one if it is wanted, none waits, and no run is on."""
        self._forget_ended()
        if not self.wanted or self.standby is not None or run_is_on():
            return
        clear_unused(self.workspace)
        folder = new_folder(self.workspace)
        env = job_env(self.workspace, folder, single_cpu_process_env())
        with open(folder / LOG_FILE, "ab") as log:
            process = spawn(standby_argv(sys.executable, os.getpid()), folder, env, log)
        self.standby = Standby(process, folder, env)

    def take(
        self, spec: JobSpec, job_dir: Path, argv: list[str], env: dict[str, str]
    ) -> subprocess.Popen | None:
        """The waiting standby's process, now running this job; None when it cannot take it."""
        waiting, self.standby = self.standby, None
        arguments = trainer_arguments(argv, sys.executable)
        if (
            waiting is None
            or arguments is None
            or not spec.single_cpu_process
            or spec.train.use_8bit_bnb  # the standby's trainer runs without bitsandbytes
            or not waiting.waiting()
            or not waiting.fits(env)
            or not hand_over(waiting, job_dir, arguments)
        ):
            self.standby = waiting
            return None
        return waiting.process

    def close(self) -> None:
        """End the waiting standby, and want none from now on."""
        self.wanted = False
        if self.standby is not None:
            close(self.standby)
            self.standby = None

    def _forget_ended(self) -> None:
        """A standby that ended untaken (it waited too long, or it failed) is not made again
        until the page asks: an idle app should not hold its memory for good, nor start a
        failing one every second."""
        ended = self.standby
        if ended is None or ended.waiting():
            return
        self.standby, self.wanted = None, False
        try:
            code = ended.process.wait(timeout=5)  # closing itself takes milliseconds
        except subprocess.TimeoutExpired:
            close(ended, force=True)
            code = ended.process.returncode
        if code != 0:
            last = log_tail(ended.folder / LOG_FILE, 2000).strip().splitlines()[-1:]
            logger.warning(
                "the trainer kept ready for CPU runs ended with exit status %s%s; runs start "
                "in a fresh process",
                code,
                f" ({last[0]})" if last else "",
            )
