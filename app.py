"""Launch the CogVideoX Studio web app: `python app.py [--host] [--port] [--workspace] ...`."""

from __future__ import annotations

import argparse
import errno
import importlib.abc
import importlib.machinery
import os
import socket
import sys
from pathlib import Path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="CogVideoX Studio web app")
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default: loopback only)"
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--workspace", default="./workspace", help="folder for datasets, runs and the job store"
    )
    parser.add_argument("--auth", help="USER:PASS required to open the page and its API")
    parser.add_argument("--share", action="store_true", help="open a public Gradio share link")
    parser.add_argument(
        "--data-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="a server folder whose datasets may be used in place (repeatable)",
    )
    parser.add_argument(
        "--hub-endpoint",
        default=None,
        help="the Hugging Face Hub address to push to (default: the public Hub)",
    )
    parser.add_argument(
        "--no-standby",
        dest="standby",
        action="store_false",
        help="start no trainer ahead of a CPU run's Start (one holds about 0.4 GB of memory "
        "while it waits; without it, the first step comes about 5 s later)",
    )
    return parser.parse_args(argv)


def exposure_warnings(host: str, share: bool, has_auth: bool) -> list[str]:
    """What a user must hear before the app is served beyond this machine without a password."""
    if has_auth:
        return []
    warnings = []
    if host not in ("127.0.0.1", "localhost", "::1"):
        warnings.append(
            f"serving on {host} without --auth: anyone who can reach this machine can start "
            "jobs on your GPUs"
        )
    if share:
        warnings.append(
            "--share without --auth publishes this app on a public link: anyone who has the "
            "link can start jobs on your GPUs and read your workspace; add --auth USER:PASS"
        )
    return warnings


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class _NoGradioStubWriter(importlib.abc.MetaPathFinder):
    """Loads `gradio.component_meta` with its `.pyi` stub writer turned into a no-op.

    At import, Gradio's component metaclass re-renders the type stub of every component class
    (an ast parse of the class's module and a Jinja render, per class) and compares it with the
    installed `.pyi`, rewriting it if it differs: about 1 s of a 2 s `import gradio` on 2 cores,
    for stub files that only type checkers read. Nothing the page serves depends on it. If a
    later Gradio renames the function, this changes nothing and the import is just slower.
    """

    MODULE = "gradio.component_meta"

    def find_spec(self, name, path, target=None):
        if name != self.MODULE:
            return None
        sys.meta_path.remove(self)  # one module, once
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if hasattr(module, "create_or_modify_pyi"):
                module.create_or_modify_pyi = lambda *args, **kwargs: None

        spec.loader.exec_module = exec_module
        return spec


def prepare_gradio() -> None:
    """Settings that must be in place before Gradio is imported and the page is built."""
    # A private training tool: no version check against api.gradio.app and no usage pings (each
    # is a thread that builds a TLS context while the page is starting).
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # Event handlers that may run at once. Given here rather than by `page.queue(...)`, which
    # builds the whole FastAPI app once more before `launch()` builds it again.
    os.environ.setdefault("GRADIO_DEFAULT_CONCURRENCY_LIMIT", "4")
    if "gradio" not in sys.modules:
        sys.meta_path.insert(0, _NoGradioStubWriter())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            print("error: --auth must be USER:PASS", file=sys.stderr)
            return 2
        auth = (user, password)
    for warning in exposure_warnings(args.host, args.share, auth is not None):
        print(f"warning: {warning}", file=sys.stderr)
    if not port_is_free(args.host, args.port):
        print(f"error: port {args.port} is in use; pass --port with a free one", file=sys.stderr)
        return 2
    workspace = Path(args.workspace).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    from core.hub import hub_offline

    if hub_offline():
        print(
            "note: HF_HUB_OFFLINE is set: base models named by a Hub id cannot download and "
            "pushes to the Hub fail; start the app without it to go online",
            file=sys.stderr,
        )

    prepare_gradio()
    from ui.page import build_page, css, head
    from ui.studio import Studio

    data_dirs = [Path(d).expanduser().resolve() for d in args.data_dir]
    studio = Studio(
        workspace, data_dirs=data_dirs, hub_endpoint=args.hub_endpoint, standby=args.standby
    )
    page = build_page(studio)
    page.launch(
        server_name=args.host,
        server_port=args.port,
        auth=auth,
        share=args.share,
        allowed_paths=[str(workspace), *map(str, data_dirs)],
        css=css(),
        head=head(),
        footer_links=["gradio", "settings"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
