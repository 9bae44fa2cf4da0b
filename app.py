"""Launch the CogVideoX Studio web app: `python app.py [--host] [--port] [--workspace] ...`."""

from __future__ import annotations

import argparse
import errno
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
    return parser.parse_args(argv)


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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    auth = None
    if args.auth:
        user, _, password = args.auth.partition(":")
        if not user or not password:
            print("error: --auth must be USER:PASS", file=sys.stderr)
            return 2
        auth = (user, password)
    if args.host not in ("127.0.0.1", "localhost", "::1") and auth is None:
        print(
            f"warning: serving on {args.host} without --auth: anyone who can reach this "
            "machine can start jobs on your GPUs",
            file=sys.stderr,
        )
    if not port_is_free(args.host, args.port):
        print(f"error: port {args.port} is in use; pass --port with a free one", file=sys.stderr)
        return 2
    workspace = Path(args.workspace).expanduser().resolve()
    workspace.mkdir(parents=True, exist_ok=True)

    from ui.page import build_page, css
    from ui.studio import Studio

    data_dirs = [Path(d).expanduser().resolve() for d in args.data_dir]
    studio = Studio(workspace, data_dirs=data_dirs, hub_endpoint=args.hub_endpoint)
    page = build_page(studio)
    page.queue(default_concurrency_limit=4)
    page.launch(
        server_name=args.host,
        server_port=args.port,
        auth=auth,
        share=args.share,
        allowed_paths=[str(workspace), *map(str, data_dirs)],
        css=css(),
        footer_links=["gradio", "settings"],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
