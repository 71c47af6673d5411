"""A local stand-in for the Hugging Face hub's HTTP API, serving fixture repositories to the real huggingface_hub.

Point ``HF_ENDPOINT`` at :attr:`FakeHubServer.url` and huggingface_hub (``HfApi.model_info``, ``hf_hub_download``)
talks to it as to huggingface.co: the file list with sizes, HEAD for a file's metadata (commit, etag, size), GET
for its bytes. Every request is recorded, so a test can say what was fetched. Repositories named in ``gated``
answer 401 with the hub's ``GatedRepo`` error code; unknown ones ``RepoNotFound``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

from tests.hub_fixtures import HubRepo, blob_name


class FakeHubServer:
    """Serves ``repos`` (by id) on 127.0.0.1 in a thread; a context manager."""

    def __init__(self, repos: Mapping[str, HubRepo], gated: Iterable[str] = ()) -> None:
        self.repos = dict(repos)
        self.gated = set(gated)
        self.requests: list[tuple[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.hub = self  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def downloaded(self) -> list[str]:
        """Paths whose bytes were fetched (GET on a file), in order."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and "/resolve/" in path]

    def __enter__(self) -> FakeHubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # quiet: the test reads hub.requests
        pass

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def _answer(self, *, send_body: bool) -> None:
        hub: FakeHubServer = self.server.hub  # type: ignore[attr-defined]
        path = unquote(urlsplit(self.path).path)
        hub.requests.append((self.command, path))
        if path.startswith("/api/models/"):
            repo_id = "/".join(path[len("/api/models/"):].split("/")[:2])
            self._file_list(hub, repo_id, send_body)
        elif "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            self._file(hub, repo_id, rest.split("/", 1)[1], send_body)
        else:
            self._refuse(404, "EntryNotFound", send_body)

    def _repo(self, hub: FakeHubServer, repo_id: str, send_body: bool) -> HubRepo | None:
        if repo_id in hub.gated:
            self._refuse(401, "GatedRepo", send_body, f"Access to model {repo_id} is restricted.")
            return None
        if repo_id not in hub.repos:
            self._refuse(401, "RepoNotFound", send_body, "Repository not found")
            return None
        return hub.repos[repo_id]

    def _file_list(self, hub: FakeHubServer, repo_id: str, send_body: bool) -> None:
        repo = self._repo(hub, repo_id, send_body)
        if repo is not None:
            siblings = [{"rfilename": path, "size": size} for path, size in sorted(repo.sizes.items())]
            self._send(200, json.dumps({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                                        "siblings": siblings}).encode(), "application/json", send_body)

    def _file(self, hub: FakeHubServer, repo_id: str, filename: str, send_body: bool) -> None:
        repo = self._repo(hub, repo_id, send_body)
        if repo is None:
            return
        if filename not in repo.sizes:
            self._refuse(404, "EntryNotFound", send_body)
            return
        data = (repo.snapshot / filename).read_bytes()
        headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{blob_name(filename, data)}"'}
        self._send(200, data, "application/octet-stream", send_body, headers)

    def _refuse(self, status: int, code: str, send_body: bool, message: str = "") -> None:
        self._send(status, json.dumps({"error": message or code}).encode(), "application/json", send_body,
                   {"X-Error-Code": code, "X-Error-Message": message or code})

    def _send(self, status: int, body: bytes, content_type: str, send_body: bool,
              headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)
