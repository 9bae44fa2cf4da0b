"""A job's processes: how they start, how they are found again, how their exit is recorded.

A job runs as `sh -c '<command>; record exit'` in a session of its own, with its output going
to `<job dir>/train.log`: it is nobody's pipe, so it outlives the app that started it. Every
process of the job carries the job folder in its environment (COGVIDEOX_JOB_DIR), which is how
the runner finds them again after an app restart, whatever launched them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
LOG_FILE = "train.log"
EXIT_FILE = "exit_code"
MARKER = "COGVIDEOX_JOB_DIR"
NO_TICK_FILE = "no-tick"

# The wrapper keeps the exit status after the app that started the job is gone, then lets the
# queue start whatever was waiting for this job's GPUs. The trap makes the shell wait for the
# trainer's own graceful stop instead of dying first. On a full disk the status cannot be
# written into a file, but an empty file whose name carries it needs no data block.
# A standby that closed before it became a job (jobs/standby.py) has nothing to record.
# The tick is not part of the job: it runs in a session of its own and without the job's
# marker, or finishing the job (which kills the job's process group and every process that
# carries the marker) would kill the tick before it could start the next job. A runner that
# waits for the job to end and schedules itself holds the tick back (NO_TICK_FILE).
WRAPPER = r"""
trap ':' INT TERM
"$@"
code=$?
[ -e "$COGVIDEOX_JOB_DIR/spec.json" ] || exit "$code"
if printf '%s\n' "$code" > "$COGVIDEOX_JOB_DIR/.exit_code.partial"; then
    mv "$COGVIDEOX_JOB_DIR/.exit_code.partial" "$COGVIDEOX_JOB_DIR/exit_code"
else
    rm -f "$COGVIDEOX_JOB_DIR/.exit_code.partial"
    : > "$COGVIDEOX_JOB_DIR/exit_code.$code"
fi
[ -e "$COGVIDEOX_JOB_DIR/no-tick" ] || (
    unset COGVIDEOX_JOB_DIR
    exec setsid "$COGVIDEOX_JOB_PYTHON" -m jobs --workspace "$COGVIDEOX_JOB_WORKSPACE" tick
) </dev/null >/dev/null 2>&1 &
exit "$code"
"""


def default_stop_signals() -> None:
    """In a job's process before it starts: SIGINT and SIGTERM back to their defaults.

    An app started in the background by a script (or under nohup) inherits SIGINT ignored, and
    its jobs would too: a run could not be stopped, nor an idle preview worker step aside.
    SIGHUP stays as it was, so jobs still outlive a closed terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def job_env(workspace: Path, job_dir: Path, launch_env: dict[str, str]) -> dict[str, str]:
    """The environment a job's processes start with."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            MARKER: str(job_dir),
            "COGVIDEOX_JOB_PYTHON": sys.executable,
            "COGVIDEOX_JOB_WORKSPACE": str(workspace),
        }
    )
    env.update(launch_env)
    return env


def spawn(argv: list[str], folder: Path, env: dict[str, str], log) -> subprocess.Popen:
    """`argv` under the wrapper, in `folder`, in a session of its own, writing to `log`."""
    return subprocess.Popen(
        ["/bin/sh", "-c", WRAPPER, "cogvideox-job", *argv],
        cwd=folder,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=default_stop_signals,
    )


def marked_processes() -> Iterator[tuple[psutil.Process, str]]:
    """Every live process that carries a job folder marker (this one aside), with its marker."""
    for process in psutil.process_iter(["pid", "status"]):
        if process.pid == os.getpid() or process.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        try:
            marker = process.environ().get(MARKER)
        except psutil.Error:
            continue
        if marker:
            yield process, marker


def job_processes(job_dir: str) -> list[psutil.Process]:
    """Every live process of the job, found by the job folder in its environment.

    Process groups are not enough: torchrun starts each rank in a session of its own, and a
    rank whose launcher died is adopted by init; the environment goes wherever they go. A
    standby that became the job carries a link to its folder (jobs/standby.py).
    """
    folder = os.path.realpath(job_dir)
    return [
        process
        for process, marker in marked_processes()
        if marker == job_dir or os.path.realpath(marker) == folder
    ]


def trainers(job_dir: str) -> list[psutil.Process]:
    """The trainer processes of a job (every rank), not the launcher or the wrapper."""
    found = []
    for process in job_processes(job_dir):
        try:
            cmdline = process.cmdline()
        except psutil.Error:
            continue
        if runs_module(cmdline, "core.train"):
            found.append(process)
    return found


def runs_module(cmdline: list[str], module: str) -> bool:
    """Whether a command line is `python [-flags] -m module ...` itself, not a launcher
    (accelerate, torchrun) that was given the module to start."""
    for position, argument in enumerate(cmdline[1:], start=1):
        if argument == "-m":
            return cmdline[position + 1 : position + 2] == [module]
        if not argument.startswith("-"):
            return False  # a script: the launcher's own program
    return False


def read_exit_code(job_dir: Path) -> int | None:
    """The exit status the job's wrapper recorded, if its last attempt has ended."""
    try:
        return int((job_dir / EXIT_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        pass
    for marker in job_dir.glob(f"{EXIT_FILE}.*"):  # written on a full disk: the name holds it
        with contextlib.suppress(ValueError):
            return int(marker.name.removeprefix(f"{EXIT_FILE}."))
    return None


def clear_exit_code(job_dir: Path) -> None:
    (job_dir / EXIT_FILE).unlink(missing_ok=True)
    for marker in job_dir.glob(f"{EXIT_FILE}.*"):
        marker.unlink(missing_ok=True)


def log_tail(path: Path, size: int = 8192) -> str:
    """The last `size` bytes of a log, as text."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
