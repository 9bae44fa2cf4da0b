"""Shared fixtures: tiny checkpoints and generated clips, built once per test session."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# No test may reach a hub: a wrong path must fail at once, not retry as a Hub id for minutes.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The precompute cache and digest memo default under XDG_CACHE_HOME: keep tests off ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="cogvideox-studio-tests-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny checkpoint per family: {"2b": path, "5b": path, "1.5": path}."""
    from core.tiny import VARIANTS, build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-models")
    return {variant: build_tiny_checkpoint(root / variant, variant) for variant in VARIANTS}


@pytest.fixture(scope="session")
def tiny_i2v_models(tmp_path_factory) -> dict[str, Path]:
    """One tiny image-to-video checkpoint per variant: {"5b-i2v": path, "1.5-i2v": path}."""
    from core.tiny import I2V_VARIANTS, build_tiny_checkpoint

    root = tmp_path_factory.mktemp("tiny-i2v-models")
    return {variant: build_tiny_checkpoint(root / variant, variant) for variant in I2V_VARIANTS}


@pytest.fixture(scope="session")
def reference_dataset(tmp_path_factory) -> Path:
    """Four 9-frame 32x32 clips in the reference layout (videos.txt + prompt.txt)."""
    from core.data.synthetic import make_reference_dataset

    return make_reference_dataset(tmp_path_factory.mktemp("dataset"), count=4)


@pytest.fixture(scope="session")
def subprocess_env() -> dict[str, str]:
    """Environment for trainer subprocesses: this venv first on PATH, the repo importable."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


@pytest.fixture
def runner(tmp_path):
    """A job runner on a fresh workspace; no job outlives the test that started it."""
    from jobs.runner import Runner
    from tests.job_folders import kill_active_jobs

    runner = Runner(tmp_path / "workspace", stop_grace=60, kill_grace=10)
    yield runner
    kill_active_jobs(runner)


@pytest.fixture(scope="session")
def tiny_captioner(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL in the Hub repo's layout (core/tiny_captioner.py)."""
    from core.tiny_captioner import build_tiny_captioner

    return build_tiny_captioner(tmp_path_factory.mktemp("tiny-captioner"))


@pytest.fixture
def busy_cpu():
    """Call with a runner: a running job then holds its CPU (tests/job_folders.py)."""
    from tests.job_folders import hold_the_cpu

    processes = []
    yield lambda runner: processes.append(hold_the_cpu(runner))
    for process in processes:
        process.kill()
        process.wait()
