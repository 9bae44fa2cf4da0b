"""A small fake of the Hugging Face Hub's HTTP API, on loopback, for push and download tests.

It answers the requests the real `huggingface_hub` client makes to create a repo, upload files
in one commit (always "regular" uploads, so nothing takes the large-file path), read a repo's
info and download its files, and it really stores and serves the bytes. Tokens are checked on
every request. `drop_next_commit()` makes it close the connection on the next commit without
answering, as a flaky network would.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class FakeRepo:
    repo_id: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40


class FakeHub:
    def __init__(self, tokens: dict[str, str]):
        """`tokens` maps each valid token to the user name it belongs to."""
        self.tokens = tokens
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[str] = []
        self._drop_commits = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def repo(self, repo_id: str) -> FakeRepo:
        return self.repos[repo_id]

    def drop_next_commit(self) -> None:
        self._drop_commits += 1

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

            def _error(self, status: int, message: str) -> None:
                self._send(
                    status, json.dumps({"error": message}).encode(), {"X-Error-Message": message}
                )

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"POST {path}")
                body = self._body()
                user = self._user()
                if user is None:
                    return self._error(401, "Invalid credentials in Authorization header")
                if path == "/api/repos/create":
                    return self._create(json.loads(body or b"{}"), user)
                if path == "/api/validate-yaml":  # the client checks a README's front matter
                    return self._json(200, {"errors": [], "warnings": []})
                parts = path.split("/")
                if len(parts) >= 6 and parts[1:3] == ["api", "models"]:
                    repo_id = f"{parts[3]}/{parts[4]}"
                    if repo_id not in hub.repos:
                        return self._error(404, "Repository not found")
                    if not repo_id.startswith(user + "/"):
                        return self._error(403, "You don't have the rights to write here")
                    if parts[5] == "preupload":
                        files = json.loads(body)["files"]
                        return self._json(
                            200,
                            {
                                "files": [
                                    {
                                        "path": f["path"],
                                        "uploadMode": "regular",
                                        "shouldIgnore": False,
                                    }
                                    for f in files
                                ]
                            },
                        )
                    if parts[5] == "commit":
                        return self._commit(repo_id, body)
                return self._error(404, f"no route for POST {path}")

            def _create(self, payload: dict, user: str) -> None:
                name = payload.get("name", "")
                owner = payload.get("organization") or user
                repo_id = f"{owner}/{name}"
                if owner != user:
                    return self._error(403, "You don't have the rights to create a repo there")
                with hub._lock:
                    if repo_id in hub.repos:  # the real Hub names the repo's URL here too
                        message = "You already created this model repo"
                        return self._send(
                            409,
                            json.dumps({"error": message, "url": f"{hub.url}/{repo_id}"}).encode(),
                            {"X-Error-Message": message},
                        )
                    private = payload.get("private") or payload.get("visibility") == "private"
                    hub.repos[repo_id] = FakeRepo(repo_id, bool(private))
                self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})

            def _commit(self, repo_id: str, body: bytes) -> None:
                if hub._drop_commits:
                    hub._drop_commits -= 1
                    self.close_connection = True
                    self.connection.close()  # no answer at all
                    return
                repo = hub.repos[repo_id]
                files = {}
                for line in body.splitlines():
                    item = json.loads(line)
                    if item["key"] == "file":
                        value = item["value"]
                        files[value["path"]] = base64.b64decode(value["content"])
                with hub._lock:
                    repo.files.update(files)
                    digest = hashlib.sha1(body).hexdigest()
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
                    return None
                return repo

            def do_GET(self) -> None:
                path = unquote(urlparse(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                parts = path.split("/")
                if path == "/api/whoami-v2":
                    user = self._user()
                    if user is None:
                        return self._error(401, "Invalid credentials in Authorization header")
                    return self._json(
                        200,
                        {"type": "user", "name": user, "auth": {"accessToken": {"role": "write"}}},
                    )
                if len(parts) >= 5 and parts[1:3] == ["api", "models"]:
                    repo = self._visible(f"{parts[3]}/{parts[4]}")
                    if repo is None:
                        return self._error(404, "Repository not found")
                    return self._json(
                        200,
                        {
                            "id": repo.repo_id,
                            "modelId": repo.repo_id,
                            "sha": repo.sha,
                            "private": repo.private,
                            "siblings": [{"rfilename": name} for name in sorted(repo.files)],
                        },
                    )
                if len(parts) >= 6 and parts[3] == "resolve":
                    repo = self._visible(f"{parts[1]}/{parts[2]}")
                    name = "/".join(parts[5:])
                    if repo is None or name not in repo.files:
                        return self._error(404, "Entry not found")
                    data = repo.files[name]
                    etag = hashlib.sha1(data).hexdigest()
                    return self._send(
                        200,
                        data,
                        {"ETag": f'"{etag}"', "X-Repo-Commit": repo.sha},
                        content_type="application/octet-stream",
                    )
                return self._error(404, f"no route for GET {path}")

            do_HEAD = do_GET

        return Handler
