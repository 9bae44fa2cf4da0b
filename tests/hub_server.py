"""A small fake of the Hugging Face Hub's HTTP API, on loopback, for push and download tests.

It answers the requests the real `huggingface_hub` client makes to create a repo, upload files
in one commit (always "regular" uploads, so nothing takes the large-file path), read a repo's
info and download its files, and it really stores and serves the bytes. Tokens are checked on
every request that writes or reads a private repo. `drop_next("commit")` (or "create") makes it
close the connection on the next such request without answering, as a flaky network would; a
dropped "create" still creates the repo, as the real Hub would before its answer got lost.

    with FakeHub(tokens={"hf_xxx": "tester"}) as hub:
        push_run(run, "tester/name", token="hf_xxx", endpoint=hub.url)
        hub.repo("tester/name").files["README.md"]
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

# What the real Hub puts in every new repo.
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


@dataclass
class FakeRepo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=lambda: {".gitattributes": GITATTRIBUTES})
    commits: list[str] = field(default_factory=lambda: [hashlib.sha1(b"initial").hexdigest()])

    @property
    def sha(self) -> str:
        return self.commits[-1]


class FakeHub:
    def __init__(self, tokens: dict[str, str]):
        """`tokens` maps each valid token to the user name it belongs to."""
        self.tokens = tokens
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[str] = []  # "METHOD /path", in order
        self._drops: dict[str, int] = {}
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def repo(self, repo_id: str) -> FakeRepo:
        return self.repos[repo_id]

    def drop_next(self, route: str) -> None:
        """Close the connection without an answer on the next "create" or "commit" request."""
        assert route in ("create", "commit"), route
        with self._lock:
            self._drops[route] = self._drops.get(route, 0) + 1

    def drop_next_commit(self) -> None:
        self.drop_next("commit")

    def _take_drop(self, route: str) -> bool:
        with self._lock:
            if self._drops.get(route):
                self._drops[route] -= 1
                return True
            return False

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    # ---- the HTTP side ---------------------------------------------------------------------

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30  # a stuck client never holds a server thread for long

            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _user(self) -> str | None:
                header = self.headers.get("Authorization", "")
                return hub.tokens.get(header.removeprefix("Bearer ").strip())

            def _send(
                self,
                status: int,
                body: bytes = b"",
                headers: dict | None = None,
                content_type: str = "application/json",
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, data) -> None:
                self._send(status, json.dumps(data).encode())

            def _error(self, status: int, message: str, **extra) -> None:
                body = json.dumps({"error": message, **extra}).encode()
                self._send(status, body, {"X-Error-Message": message})

            def _hang_up(self) -> None:
                self.close_connection = True
                self.connection.close()  # no status line, no headers: nothing at all

            def do_POST(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"POST {path}")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                user = self._user()
                if user is None:
                    return self._error(401, "Invalid credentials in Authorization header")
                if path == "/api/repos/create":
                    return self._create(json.loads(body or b"{}"), user)
                if path == "/api/validate-yaml":  # the client checks a README's front matter
                    return self._json(200, {"errors": [], "warnings": []})
                parts = path.split("/")  # "", "api", "models", owner, name, action, revision
                if len(parts) == 7 and parts[1:3] == ["api", "models"]:
                    repo_id = f"{parts[3]}/{parts[4]}"
                    if repo_id not in hub.repos:
                        return self._error(404, "Repository not found")
                    if not repo_id.startswith(user + "/"):
                        return self._error(403, "You don't have the rights to write here")
                    if parts[5] == "preupload":
                        files = json.loads(body)["files"]
                        answer = [
                            {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                            for f in files
                        ]
                        return self._json(200, {"files": answer})
                    if parts[5] == "commit":
                        return self._commit(repo_id, body)
                return self._error(404, f"no route for POST {path}")

            def _create(self, payload: dict, user: str) -> None:
                owner = payload.get("organization") or user
                repo_id = f"{owner}/{payload.get('name', '')}"
                if owner != user:
                    return self._error(403, "You don't have the rights to create a repo there")
                with hub._lock:
                    if repo_id in hub.repos:  # the real Hub names the repo's URL here too
                        url = f"{hub.url}/{repo_id}"
                        return self._error(409, "You already created this model repo", url=url)
                    private = payload.get("private") or payload.get("visibility") == "private"
                    hub.repos[repo_id] = FakeRepo(repo_id, bool(private))
                if hub._take_drop("create"):
                    return self._hang_up()
                self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

            def _commit(self, repo_id: str, body: bytes) -> None:
                if hub._take_drop("commit"):
                    return self._hang_up()
                files = {}
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        assert value.get("encoding", "base64") == "base64", value.get("encoding")
                        files[value["path"]] = base64.b64decode(value["content"])
                    elif item["key"] != "header":  # LFS pointers, deletions: never asked for
                        return self._error(400, f"unsupported commit operation {item['key']}")
                digest = hashlib.sha1(body).hexdigest()
                with hub._lock:
                    repo = hub.repos[repo_id]
                    repo.files.update(files)
                    repo.commits.append(digest)
                self._json(
                    200,
                    {
                        "commitUrl": f"{hub.url}/{repo_id}/commit/{digest}",
                        "commitOid": digest,
                        "pullRequestUrl": None,
                    },
                )

            def _visible(self, repo_id: str) -> FakeRepo | None:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return None
                user = self._user()
                if repo.private and (user is None or not repo_id.startswith(user + "/")):
                    return None  # the real Hub hides a private repo behind a 404 too
                return repo

            def do_GET(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                parts = path.split("/")
                if path == "/api/whoami-v2":
                    user = self._user()
                    if user is None:
                        return self._error(401, "Invalid credentials in Authorization header")
                    token = {"accessToken": {"role": "write"}}
                    return self._json(200, {"type": "user", "name": user, "auth": token})
                # /api/models/{owner}/{name}/tree/{rev}[/{path}]: the files, as snapshots list
                if len(parts) >= 7 and parts[1:3] == ["api", "models"] and parts[5] == "tree":
                    repo = self._visible(f"{parts[3]}/{parts[4]}")
                    if repo is None:
                        return self._error(404, "Repository not found")
                    entries = [
                        {
                            "type": "file",
                            "path": name,
                            "size": len(data),
                            "oid": hashlib.sha1(data).hexdigest(),
                        }
                        for name, data in sorted(repo.files.items())
                    ]
                    return self._json(200, entries)
                # /api/models/{owner}/{name}[/revision/{rev}]: the repo's info
                if len(parts) in (5, 7) and parts[1:3] == ["api", "models"]:
                    repo = self._visible(f"{parts[3]}/{parts[4]}")
                    if repo is None:
                        return self._error(404, "Repository not found")
                    info = {
                        "id": repo.repo_id,
                        "modelId": repo.repo_id,
                        "sha": repo.sha,
                        "private": repo.private,
                        "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                    }
                    return self._json(200, info)
                # /{owner}/{name}/resolve/{rev}/{path}: a file's bytes (or, for HEAD, headers)
                if len(parts) >= 6 and parts[3] == "resolve":
                    repo = self._visible(f"{parts[1]}/{parts[2]}")
                    name = "/".join(parts[5:])
                    if repo is None:
                        return self._error(404, "Repository not found")
                    if name not in repo.files:
                        return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    data = repo.files[name]
                    headers = {"ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
                    headers["X-Repo-Commit"] = repo.sha
                    return self._send(200, data, headers, content_type="application/octet-stream")
                return self._error(404, f"no route for GET {path}")

            do_HEAD = do_GET

        return Handler
