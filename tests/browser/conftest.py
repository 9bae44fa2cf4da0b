"""A real app process on loopback and Debian's chromium driven by Playwright."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout: float = 60.0, auth: tuple[str, str] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (a login page or a refusal is an answer)
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


# What a user's shell has and the test run's does not: the tests' own offline switch, and an
# outer make's variables (under `make test`).
NOT_IN_A_USERS_SHELL = ("HF_HUB_OFFLINE", "MAKEFLAGS", "MFLAGS", "MAKELEVEL")


class AppProcess:
    """The app on a free loopback port, restartable on the same workspace: `python app.py`, or
    with `via_make` the README's `make run` in a user's environment (nothing set for tests)."""

    def __init__(
        self,
        workspace: Path,
        *extra: str,
        env: dict[str, str] | None = None,
        via_make: bool = False,
    ):
        self.workspace = workspace
        self.extra = list(extra)
        self.via_make = via_make
        base = dict(os.environ)
        if via_make:
            base = {k: v for k, v in base.items() if k not in NOT_IN_A_USERS_SHELL}
        self.env = dict(base, PYTHONUNBUFFERED="1", **(env or {}))
        self.proc: subprocess.Popen | None = None
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def _argv(self) -> list[str]:
        flags = ["--port", str(self.port), "--workspace", str(self.workspace), *self.extra]
        if not self.via_make:
            return [sys.executable, str(REPO / "app.py"), *flags]
        # -o: the shared test virtualenv counts as installed (no pip install from a test).
        return ["make", "-s", "-o", ".venv/.installed-run", "run", f"ARGS={' '.join(flags)}"]

    def start(self) -> AppProcess:
        self.port = free_port()
        log = open(self.workspace / f"app-{self.port}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self._argv(),
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # make and the app it starts: one group to signal
        )
        wait_for_http(self.url)
        return self

    @property
    def pid(self) -> int:
        """The app's own process (under make, the `python app.py` that make started)."""
        if not self.via_make:
            return self.proc.pid
        import psutil

        for child in psutil.Process(self.proc.pid).children(recursive=True):
            if "app.py" in " ".join(child.cmdline()):
                return child.pid
        raise AssertionError("make run started no app.py")

    def environment(self) -> dict[str, str]:
        """The running app's environment, as the kernel holds it."""
        raw = Path(f"/proc/{self.pid}/environ").read_bytes()
        pairs = (entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
        return {key.decode(): value.decode(errors="replace") for key, value in pairs}

    def kill(self) -> None:
        """SIGKILL, as a crash would: the app gets no chance to clean anything up."""
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=20)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def loaded_torch(self) -> bool:
        """Whether the app process has torch's library mapped (it imports torch if so)."""
        maps = Path(f"/proc/{self.pid}/maps").read_text()
        return "libtorch" in maps


def fill_field(page, selector: str, value: str) -> None:
    """Type into a field and leave it, as a person does: the page takes the value on blur."""
    field = page.locator(selector)
    field.fill(value)
    field.press("Tab")
    field.page.wait_for_function(
        "([s, v]) => document.querySelector(s) && document.querySelector(s).value === v",
        arg=[selector, value],
    )


@pytest.fixture
def workspace(tmp_path):
    """A fresh workspace; the jobs a test started there (a preview worker, a run) end with it."""
    from jobs.runner import Runner
    from tests.job_folders import kill_active_jobs

    path = tmp_path / "workspace"
    path.mkdir()
    yield path
    kill_active_jobs(Runner(path))


@pytest.fixture
def app(workspace):
    app = AppProcess(workspace).start()
    yield app
    app.stop()


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail("Debian's chromium is missing: run the README's test command (make test)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class Shots:
    """Screenshots of each step, kept in test-artifacts/ (never committed)."""

    def __init__(self, page, test_name: str):
        self.page = page
        self.prefix = test_name
        self.count = 0

    def __call__(self, step: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.count += 1
        self.page.screenshot(
            path=str(ARTIFACTS / f"{self.prefix}-{self.count:02d}-{step}.png"), full_page=True
        )


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.shots = Shots(page, request.node.name)
    yield page
    page.shots("end")
    context.close()
