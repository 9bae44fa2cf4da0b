"""The trainer's side of a standby (jobs/standby.py): import what a run needs, then wait for a job.

`python -m core.train --standby --owner PID --idle-timeout S` runs in a standby folder under the
app's workspace. It imports the libraries every CPU run loads (about 6 s on a 2-core machine),
then waits for the runner to claim it and write `job.json` (the job's folder and the trainer's
arguments). It takes the job as if it had been started for it: the job folder's marker in its
environment, the folder as its working directory, train.log as its output. If its app's
process ends, or nobody claims it for `--idle-timeout` seconds, it closes itself (only one of
closing and claiming can win: both rename the same `open` file) and removes its folder.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import psutil

# The hand-over's files in the standby folder; the runner's side (jobs/standby.py) uses them too.
OPEN_FILE = "open"  # present while the standby waits: renamed by whoever claims or closes it
CLAIMED_FILE = "claimed"
CLOSED_FILE = "closed"
JOB_FILE = "job.json"  # the job's folder and trainer arguments, written after the claim
POLL_SECONDS = 0.1  # how soon a handed-over job starts (a wake-up costs the idle CPU)
OWNER_CHECK_SECONDS = 1.0
CLAIMED_WAIT_SECONDS = 30.0  # a claim's job.json follows within milliseconds
_TAKEN = threading.Event()  # set once the job is read: the process is the job's from then on


def import_what_a_run_needs() -> None:
    """The libraries and the trainer's own modules a CPU LoRA run imports before its first
    step, kept out of the time between Start and that step. bitsandbytes and DeepSpeed stay
    out: the runner hands a standby no run that uses them."""
    for package in ("bitsandbytes", "deepspeed"):
        sys.modules.setdefault(package, None)
    import accelerate  # noqa: F401
    import av  # noqa: F401  (the clips' decoder)
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import torch  # noqa: F401
    from diffusers import (  # noqa: F401
        AutoencoderKLCogVideoX,
        CogVideoXDPMScheduler,
        CogVideoXPipeline,
        CogVideoXTransformer3DModel,
    )
    from transformers import T5EncoderModel, T5Tokenizer  # noqa: F401

    import core.data.dataset
    import core.models.cogvideox
    import core.performance
    import core.training.setup
    import core.training.validation  # noqa: F401


def wait_for_job(argv: list[str]) -> list[str]:
    """The trainer arguments of the job handed to this standby (the process now runs it); the
    process exits instead when its app is gone or nobody claimed it in time."""
    parser = argparse.ArgumentParser(prog="python -m core.train --standby")
    parser.add_argument("--owner", type=int, required=True, help="the app's process id")
    parser.add_argument("--idle-timeout", type=float, default=1800.0)
    args = parser.parse_args(argv)
    # Watched from the start: an app closed while this process imports must not leave it
    # importing for seconds more.
    threading.Thread(
        target=_close_when_unwanted, args=(_OwnerWatch(args.owner), args.idle_timeout), daemon=True
    ).start()
    import_what_a_run_needs()
    # The modules' own objects live as long as the process: out of the collector's sight, each
    # gc.collect() of the run (after the text encoder and the VAE are dropped, after each
    # validation) takes milliseconds instead of a quarter of a second. The job's models are
    # loaded after this and stay collectable.
    gc.freeze()
    # Paths here are relative to the working folder: the runner renames the standby folder
    # when it claims it, and puts a link to the job folder in its place.
    while not os.path.isfile(JOB_FILE):
        time.sleep(POLL_SECONDS)
    return _take()


class _OwnerWatch:
    """Whether the app that started this standby is still there (not a recycled pid)."""

    def __init__(self, pid: int):
        self.pid = pid
        try:
            self.created = psutil.Process(pid).create_time()
        except psutil.Error:
            self.created = None

    def gone(self) -> bool:
        try:
            return self.created is None or psutil.Process(self.pid).create_time() != self.created
        except psutil.Error:
            return True


def _close_when_unwanted(owner: _OwnerWatch, idle_timeout: float) -> None:
    """Close the standby and end the process when its app is gone or it waited too long;
    nothing once the runner claimed it (the `open` file is no longer there to rename)."""
    started = time.monotonic()
    while not (owner.gone() or time.monotonic() - started > idle_timeout):
        if _TAKEN.wait(OWNER_CHECK_SECONDS):
            return  # the process is the job's now: it outlives the app like any job
    try:
        os.rename(OPEN_FILE, CLOSED_FILE)
    except FileNotFoundError:  # claimed: the job goes on, once its job.json is read
        if not _TAKEN.wait(CLAIMED_WAIT_SECONDS):
            os._exit(1)  # a claim with no job (its runner died between the two): give up
        return
    shutil.rmtree(os.getcwd(), ignore_errors=True)
    os._exit(0)  # from this thread, while the main thread may still be importing


def _take() -> list[str]:
    """Become the job's process: its marker, its folder, its log."""
    folder = os.getcwd()  # the standby folder's new name
    job = json.loads(Path(JOB_FILE).read_text(encoding="utf-8"))
    _TAKEN.set()
    job_dir = Path(job["job_dir"])
    os.environ["COGVIDEOX_JOB_DIR"] = str(job_dir)  # what processes it starts carry
    os.chdir(job_dir)
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(job_dir / "train.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    # The runner renamed the standby folder aside when it claimed it; what was logged while
    # waiting (import warnings) is of no use to the job.
    shutil.rmtree(folder, ignore_errors=True)
    return job["argv"]
