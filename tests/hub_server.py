"""A local Hugging Face Hub for tests: the real ``huggingface_hub`` client pushes to it and pulls from it on 127.0.0.1.

It speaks the part of the Hub's HTTP protocol that ``huggingface_hub`` 2.4 and ``transformers`` 5.23 use to create,
upload to, download from and delete model, dataset and space repos (``shared/research/hub_protocol.md``): git-like
commits named by 40-hex shas, branches, pull-request refs, the preupload decision, the git-LFS batch API with basic
transfers, and ``/resolve`` downloads that redirect LFS files to a second, "storage" origin the way the Hub redirects
to its CDN. Any bearer token is accepted and belongs to the user ``testuser``; anonymous callers may only read public
repos. State lives under the ``root`` folder, so a server restarted on the same folder finds its repos again.

How a test talks to it
----------------------
``huggingface_hub`` reads ``HF_ENDPOINT``, its cache folders and its Xet, telemetry and offline switches once, when
it is imported, and ``transformers`` takes no ``endpoint=`` argument. So the reliable way is a fresh Python process
whose environment is set before anything is imported: write the client side as a module-level function that takes and
returns JSON-compatible values, and call it through :func:`run_client`::

    from hub_server import run_client, serve_hub


    def push_model(repo_id: str) -> list[str]:  # runs in the child process, with HF_ENDPOINT etc. set
        from transformers import LlamaConfig, LlamaForCausalLM

        LlamaForCausalLM(LlamaConfig(...)).push_to_hub(repo_id)
        ...


    def test_push(tmp_path):
        with serve_hub(tmp_path / "hub") as endpoint:
            result = run_client(endpoint, tmp_path / "home", push_model, "testuser/tiny")

:func:`client_env` lists the variables the child gets: ``HF_ENDPOINT``, ``HF_TOKEN``, ``HF_HOME`` / ``HF_HUB_CACHE``
(and the Xet and datasets caches) inside the given home folder, ``HF_HUB_DISABLE_XET=1`` (with ``hf_xet`` installed
the client otherwise sends every LFS file to a Xet CAS server, which this Hub is not, and nothing on the server side
can make it fall back to LFS), ``HF_HUB_DISABLE_TELEMETRY=1`` and the offline switches turned off.

Inside the test process itself, calls that take ``endpoint=`` also work, with nothing patched:
``HfApi(endpoint=endpoint, token=...)`` and ``hf_hub_download(..., endpoint=endpoint, cache_dir=...)`` /
``snapshot_download(..., endpoint=endpoint, cache_dir=...)``. The catches, all from what the environment held when
``huggingface_hub`` was first imported: with ``HF_HUB_OFFLINE=1`` the client never calls out; without
``HF_HUB_DISABLE_XET=1`` LFS uploads go to Xet and fail, so start the server with ``serve_hub(root, lfs=False)``, which
commits every file as a regular git file (inline in the commit, as the Hub stores small text files) and keeps Xet out;
with Xet on, ``upload_folder`` opens an hf_xet session even for regular files, which writes logs under the HF_HOME
of import time (``~/.cache/huggingface/xet/logs``), so use ``create_commit`` / ``upload_file`` there; and without
``HF_HUB_DISABLE_TELEMETRY=1`` the first request of the process also asks the real huggingface.co once for its list
of AI-agent harnesses (offline this fails within a few seconds and is ignored). ``transformers`` (``from_pretrained``,
``push_to_hub``) always needs the child process.
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit


logger = logging.getLogger(__name__)

USER = "testuser"
TOKEN = "hf_test_token"  # what run_client's child sends; any non-empty bearer token is accepted
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores files this large with LFS whatever their name
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}  # as the API's URLs spell them
# The Hub's default .gitattributes for new repos: these patterns are stored with LFS.
LFS_PATTERNS = (
    "*.7z *.arrow *.bin *.bz2 *.ckpt *.ftz *.gz *.h5 *.joblib *.lfs.* *.mlmodel *.model *.msgpack *.npy *.npz *.onnx"
    " *.ot *.parquet *.pb *.pickle *.pkl *.pt *.pth *.rar *.safetensors saved_model/**/* *.tar.* *.tar *.tflite *.tgz"
    " *.wasm *.xz *.zip *.zst *tfevents*"
).split()
GITATTRIBUTES = "".join(f"{pattern} filter=lfs diff=lfs merge=lfs -text\n" for pattern in LFS_PATTERNS).encode()


def git_blob_id(data: bytes) -> str:
    """The git object id of a blob (``git hash-object``), which the Hub uses as the ETag of regular files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-LFS pointer file that git stores in place of an LFS file's content."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def utc_now() -> str:
    """The current time in the Hub's date format (``2024-05-01T12:00:00.123Z``)."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class HubError(Exception):
    """An error answer: HTTP status, message and the Hub's ``X-Error-Code``, which the client maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


@dataclass
class FileEntry:
    """A file in a commit: its content (by sha256, in the object store), size, and whether it is stored with LFS."""

    sha256: str
    size: int
    lfs: bool
    oid: str  # git blob id: of the content for a regular file, of the pointer file for an LFS file

    @classmethod
    def regular(cls, data: bytes, sha256: str) -> FileEntry:
        return cls(sha256=sha256, size=len(data), lfs=False, oid=git_blob_id(data))

    @classmethod
    def large(cls, sha256: str, size: int) -> FileEntry:
        return cls(sha256=sha256, size=size, lfs=True, oid=git_blob_id(lfs_pointer(sha256, size)))

    @property
    def etag(self) -> str:
        """The content hash the client compares against: sha256 for LFS files, the git blob id otherwise."""
        return self.sha256 if self.lfs else self.oid

    def lfs_info(self, hash_key: str) -> dict[str, Any]:
        return {hash_key: self.sha256, "size": self.size, "pointerSize": len(lfs_pointer(self.sha256, self.size))}

    def tree_entry(self, path: str) -> dict[str, Any]:
        """The file as a ``list_repo_tree`` / ``get_paths_info`` entry."""
        entry = {"type": "file", "path": path, "size": self.size, "oid": self.oid}
        return {**entry, "lfs": self.lfs_info("oid")} if self.lfs else entry

    def sibling(self, path: str) -> dict[str, Any]:
        """The file as a ``repo_info(files_metadata=True)`` sibling."""
        sibling = {"rfilename": path, "size": self.size, "blobId": self.oid}
        return {**sibling, "lfs": self.lfs_info("sha256")} if self.lfs else sibling


@dataclass
class Commit:
    """A commit: the full file map of the repo after it, plus its parent and message."""

    id: str
    parent: str | None
    title: str
    message: str
    author: str
    date: str
    files: dict[str, FileEntry]


def folder_entry(files: dict[str, FileEntry], path: str) -> dict[str, Any]:
    """A folder as a tree entry; its oid is a hash of what it contains."""
    inside = sorted((name, entry.oid) for name, entry in files.items() if name.startswith(path + "/"))
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(json.dumps(inside).encode()).hexdigest()}


@dataclass
class Repo:
    """A repo: its refs (branch names and ``refs/pr/N``, each pointing to a commit id) and all its commits."""

    type: str  # "model", "dataset" or "space"
    id: str  # "namespace/name"
    private: bool
    created_at: str
    refs: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Repo:
        """The repo from what `HubStore.save` wrote."""
        commits = {
            sha: Commit(**{**commit, "files": {path: FileEntry(**entry) for path, entry in commit["files"].items()}})
            for sha, commit in data["commits"].items()
        }
        return cls(**{**data, "commits": commits})

    @property
    def url(self) -> str:
        """The repo's path on the Hub's web side (``datasets/ns/name`` for a dataset)."""
        return URL_PREFIXES[self.type] + self.id

    def resolve(self, revision: str) -> Commit:
        """The commit a branch, ``refs/heads/<branch>``, ``refs/pr/N`` or commit sha names."""
        sha = self.refs.get(revision.removeprefix("refs/heads/"), revision)
        if sha not in self.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return self.commits[sha]

    def add_commit(
        self, ref: str, parent: Commit | None, files: dict[str, FileEntry], title: str, message: str
    ) -> Commit:
        """Record a commit with the given file map on top of `parent` and move `ref` to it."""
        date = utc_now()
        parent_id = parent.id if parent else None
        digest = json.dumps(
            [len(self.commits), parent_id, title, message, date, sorted((p, f.oid) for p, f in files.items())]
        )
        commit = Commit(hashlib.sha1(digest.encode()).hexdigest(), parent_id, title, message, USER, date, files)
        self.commits[commit.id] = commit
        self.refs[ref] = commit.id
        return commit


@dataclass
class Fault:
    """A failure the server answers instead of handling a request: the next `times` requests to the route `route`
    (a `HubHandler` method name such as ``commit``, ``preupload``, ``lfs_batch`` or ``storage_put``) get HTTP
    `status` (with ``Retry-After: retry_after`` when given), or, with ``status=None``, a dropped connection (closed
    without an answer). `served` counts the failures given so far."""

    route: str
    status: int | None = 500
    times: int = 1
    retry_after: int | None = None
    served: int = 0


class HubStore:
    """The Hub's state under `root`: ``objects/<sha256>`` holds every file's bytes, ``repos/<type>/<ns>/<name>.json``
    each repo's refs and commits. Every access goes through `lock`, since the server answers requests in threads."""

    def __init__(self, root: Path, lfs: bool):
        self.root, self.lfs = root, lfs
        self.lock = threading.RLock()
        (root / "objects").mkdir(parents=True, exist_ok=True)
        self.repos: dict[tuple[str, str], Repo] = {}
        for path in root.glob("repos/*/*/*.json"):
            repo = Repo.from_json(json.loads(path.read_text()))
            self.repos[repo.type, repo.id] = repo
        self.endpoint = ""  # set once the servers listen
        self.storage_url = ""
        self.faults: list[Fault] = []

    def take_fault(self, route: str) -> Fault | None:
        """The first fault for `route` with failures left (counted as served), or None."""
        for fault in self.faults:
            if fault.route == route and fault.served < fault.times:
                fault.served += 1
                return fault
        return None

    def save(self, repo: Repo) -> None:
        path = self.root / "repos" / repo.type / f"{repo.id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(repo)))

    def delete(self, repo: Repo) -> None:
        del self.repos[repo.type, repo.id]
        (self.root / "repos" / repo.type / f"{repo.id}.json").unlink()

    def object_path(self, sha256: str) -> Path:
        return self.root / "objects" / sha256

    def object_size(self, sha256: str) -> int | None:
        path = self.object_path(sha256)
        return path.stat().st_size if path.exists() else None

    def put_object(self, data: bytes) -> str:
        """Store `data` under its sha256 (through a temporary file, so an interrupted write leaves no partial object)."""
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.object_path(sha256)
        if not path.exists():
            path.with_suffix(".tmp").write_bytes(data)
            os.replace(path.with_suffix(".tmp"), path)
        return sha256

    def read(self, entry: FileEntry) -> bytes:
        return self.object_path(entry.sha256).read_bytes()

    def lfs_patterns(self, commit: Commit) -> list[str]:
        """The ``filter=lfs`` patterns of the commit's ``.gitattributes``."""
        entry = commit.files.get(".gitattributes")
        lines = self.read(entry).decode().splitlines() if entry else []
        return [line.split()[0] for line in lines if "filter=lfs" in line.split()[1:]]


def matches_any(path: str, patterns: list[str]) -> bool:
    """Whether a repo path matches a .gitattributes pattern (patterns without a slash match the file name)."""
    name = path.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(path if "/" in pattern else name, pattern) for pattern in patterns)


API = r"/api/(?P<repo_type>models|datasets|spaces)/(?P<repo_id>[^/]+/[^/]+)"
GIT = r"/(?:(?P<repo_type>datasets|spaces)/)?(?P<repo_id>[^/]+/[^/]+?)"  # no type prefix: a model
REV = r"(?P<revision>[^/]+)"


class HubHandler(BaseHTTPRequestHandler):
    """Answers one HTTP request: `ROUTES` maps method and path to the method that handles it.

    Path groups are URL-unquoted before the call (the client quotes revisions with ``safe=""``, so ``refs/pr/1``
    arrives as ``refs%2Fpr%2F1``) and ``repo_type`` becomes ``model``, ``dataset`` or ``space``. The request body is
    always read before routing, which keeps keep-alive connections in step even when the answer is an error. Handlers
    run one at a time, under the store's lock."""

    protocol_version = "HTTP/1.1"  # keep-alive: the client pools connections
    timeout = 60  # seconds an idle keep-alive connection may hold its thread
    server: HubHTTPServer

    ROUTES: list[tuple[str, str, str]] = [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("GET", API, "repo_info"),
        ("GET", API + r"/revision/" + REV, "repo_info"),
        ("GET", API + r"/tree/" + REV + r"(?:/(?P<path>.+))?", "list_tree"),
        ("POST", API + r"/paths-info/" + REV, "paths_info"),
        ("GET", API + r"/refs", "list_refs"),
        ("GET", API + r"/commits/" + REV, "list_commits"),
        ("POST", API + r"/branch/(?P<branch>[^/]+)", "create_branch"),
        ("POST", API + r"/preupload/" + REV, "preupload"),
        ("POST", API + r"/commit/" + REV, "commit"),
        ("GET", API + r"/xet-(?:read|write)-token/.*", "xet_token"),
        ("POST", GIT + r"\.git/info/lfs/objects/batch", "lfs_batch"),
        ("POST", GIT + r"\.git/info/lfs/objects/verify", "lfs_verify"),
        ("HEAD", GIT + r"/resolve/" + REV + r"/(?P<path>.+)", "resolve"),
        ("GET", GIT + r"/resolve/" + REV + r"/(?P<path>.+)", "resolve"),
        ("PUT", r"/lfs/(?P<sha256>[0-9a-f]{64})", "storage_put"),
        ("HEAD", r"/lfs/(?P<sha256>[0-9a-f]{64})", "storage_get"),
        ("GET", r"/lfs/(?P<sha256>[0-9a-f]{64})", "storage_get"),
    ]
    _COMPILED = [(method, re.compile(pattern), name) for method, pattern, name in ROUTES]

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.server.server_port, *args)

    @property
    def store(self) -> HubStore:
        return self.server.store

    # -- plumbing ---------------------------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        self.body = self._read_body()
        auth = self.headers.get("Authorization", "")
        self.user = USER if auth.startswith("Bearer ") and auth[7:].strip() else None
        try:
            for method, pattern, name in self._COMPILED:
                match = pattern.fullmatch(url.path) if method == self.command else None
                if match:
                    groups = match.groupdict()
                    args = {key: unquote(value) for key, value in groups.items() if value is not None}
                    if "repo_id" in groups:
                        args["repo_type"] = REPO_TYPES[groups["repo_type"] or "models"]
                    with self.store.lock:
                        fault = self.store.take_fault(name)
                        if fault is None:
                            getattr(self, name)(**args)
                    if fault is not None and fault.status is None:
                        self.close_connection = True  # no answer at all: the client sees the connection drop
                    elif fault is not None:
                        retry = {} if fault.retry_after is None else {"Retry-After": str(fault.retry_after)}
                        raise HubError(fault.status, f"injected failure of {name}", headers=retry)
                    return
            raise HubError(404, f"hub_server has no route for {self.command} {url.path}")
        except HubError as error:
            body = json.dumps({"error": error.message}).encode()
            headers = {**error.headers, "X-Error-Message": error.message.encode("ascii", "backslashreplace").decode()}
            if error.code:
                headers["X-Error-Code"] = error.code
            self._send(error.status, body, headers)
        except Exception as error:  # a bug here: answer it instead of dropping the connection
            logger.exception("hub_server failed on %s %s", self.command, self.path)
            self._send(500, json.dumps({"error": repr(error)}).encode())

    def _read_body(self) -> bytes:
        """The request body, sent with Content-Length or chunked (which http.server does not decode itself)."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        chunks = []
        while size := int(self.rfile.readline().split(b";")[0], 16):
            chunks.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline().strip():  # trailer lines, up to the blank line
            pass
        return b"".join(chunks)

    def _send(
        self, status: int, body: bytes, headers: dict[str, str] | None = None, content_type: str = "application/json"
    ) -> None:
        self.send_response(status)
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, data: Any, status: int = 200, content_type: str = "application/json") -> None:
        self._send(status, json.dumps(data).encode(), content_type=content_type)

    def _require_user(self) -> str:
        """The caller's user name; anonymous callers get a 401."""
        if self.user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.user

    def _repo(self, repo_type: str, repo_id: str, write: bool = False) -> Repo:
        """The repo, if the caller may see it (and, with `write`, change it); else the Hub's RepoNotFound answer."""
        if write:
            self._require_user()
        repo = self.store.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and self.user is None):
            raise HubError(
                401 if self.user is None else 404, f"Repository Not Found for url: {self.path}", "RepoNotFound"
            )
        return repo

    def _entry_not_found(self, path: str, commit: Commit) -> HubError:
        return HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.id})

    # -- account and repos ------------------------------------------------------------------------------------------

    def whoami(self) -> None:
        """``HfApi.whoami``: a fake user owning whatever token was sent."""
        token = {"displayName": "test", "role": "write"}
        user = self._require_user()
        self._json({"type": "user", "name": user, "fullname": "Test User", "orgs": [], "auth": {"accessToken": token}})

    def create_repo(self) -> None:
        """``create_repo``: an initial commit with the Hub's default .gitattributes on ``main``. A repo name without
        namespace (the Trainer sends those) goes to the caller's; an existing repo is a 409 that still carries the url,
        which ``exist_ok=True`` relies on."""
        user = self._require_user()
        request = json.loads(self.body)
        repo_type = request.get("type") or "model"
        repo_id = f"{request.get('organization') or user}/{request['name']}"
        if repo_type not in URL_PREFIXES or not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
            raise HubError(400, f"Invalid repo type or name: {repo_type} {repo_id}")
        url = f"{self.store.endpoint}/{URL_PREFIXES[repo_type]}{repo_id}"
        if (repo_type, repo_id) in self.store.repos:
            self._json({"error": "You already created this repo", "url": url}, status=409)
            return
        private = bool(request.get("private")) or request.get("visibility") == "private"
        repo = Repo(type=repo_type, id=repo_id, private=private, created_at=utc_now())
        attributes = FileEntry.regular(GITATTRIBUTES, self.store.put_object(GITATTRIBUTES))
        repo.add_commit("main", None, {".gitattributes": attributes}, "initial commit", "")
        self.store.repos[repo_type, repo_id] = repo
        self.store.save(repo)
        self._json({"url": url, "name": repo_id})

    def delete_repo(self) -> None:
        """``delete_repo``; a missing repo is RepoNotFound, which ``missing_ok=True`` relies on."""
        request = json.loads(self.body)
        repo_id = f"{request.get('organization') or self.user}/{request['name']}"
        self.store.delete(self._repo(request.get("type") or "model", repo_id, write=True))
        self._json({})

    def validate_yaml(self) -> None:
        """Checks a README's metadata before any commit that contains one; everything passes here."""
        self._json({"errors": [], "warnings": []})

    def repo_info(self, repo_type: str, repo_id: str, revision: str = "main") -> None:
        """``repo_info`` / ``model_info``: ``sha`` is what ``snapshot_download`` and ``from_pretrained`` pin to,
        ``siblings`` gain size, blob id and LFS info with ``?blobs=true`` (``files_metadata=True``)."""
        repo = self._repo(repo_type, repo_id)
        commit = repo.resolve(revision)
        blobs = self.query.get("blobs") == "true"
        siblings = [entry.sibling(path) if blobs else {"rfilename": path} for path, entry in commit.files.items()]
        namespace = repo.id.split("/")[0]
        self._json(
            {
                "_id": hashlib.sha1(repo.url.encode()).hexdigest()[:24],
                "id": repo.id,
                "author": namespace,
                "sha": commit.id,
                "private": repo.private,
                "disabled": False,
                "gated": False,
                "createdAt": repo.created_at,
                "lastModified": commit.date,
                "downloads": 0,
                "likes": 0,
                "tags": [],
                "siblings": sorted(siblings, key=lambda sibling: sibling["rfilename"]),
            }
        )

    # -- browsing ---------------------------------------------------------------------------------------------------

    def list_tree(self, repo_type: str, repo_id: str, revision: str, path: str = "") -> None:
        """``list_repo_tree`` / ``list_repo_files``: the files and folders in `path` (all below it with
        ``?recursive=true``). A path that is not a folder is EntryNotFound."""
        commit = self._repo(repo_type, repo_id).resolve(revision)
        path = path.strip("/")
        prefix = f"{path}/" if path else ""
        recursive = self.query.get("recursive") == "true"
        entries: dict[str, dict[str, Any]] = {}
        for name, entry in sorted(commit.files.items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(folder, folder_entry(commit.files, folder))
            if recursive or len(parts) == 1:
                entries[name] = entry.tree_entry(name)
        if path and not entries:
            raise self._entry_not_found(path, commit)
        self._json(list(entries.values()))

    def paths_info(self, repo_type: str, repo_id: str, revision: str) -> None:
        """``get_paths_info``: the entries of the requested paths (a form body ``paths=a&paths=b``); missing paths
        are left out."""
        commit = self._repo(repo_type, repo_id).resolve(revision)
        entries = []
        for path in parse_qs(self.body.decode()).get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                entries.append(commit.files[path].tree_entry(path))
            elif any(name.startswith(path + "/") for name in commit.files):
                entries.append(folder_entry(commit.files, path))
        self._json(entries)

    def list_refs(self, repo_type: str, repo_id: str) -> None:
        """``list_repo_refs``: branches, plus pull requests with ``?include_prs=1``; this Hub has no tags."""
        repo = self._repo(repo_type, repo_id)

        def ref_info(name: str, ref: str) -> dict[str, str]:
            return {"name": name, "ref": ref, "targetCommit": repo.refs[name]}

        refs: dict[str, Any] = {"branches": [], "tags": [], "converts": []}
        refs["branches"] = [ref_info(name, f"refs/heads/{name}") for name in repo.refs if not name.startswith("refs/")]
        if self.query.get("include_prs") == "1":
            refs["pullRequests"] = [ref_info(name, name) for name in repo.refs if name.startswith("refs/pr/")]
        self._json(refs)

    def list_commits(self, repo_type: str, repo_id: str, revision: str) -> None:
        """``list_repo_commits``: the history of a revision, newest first."""
        repo = self._repo(repo_type, repo_id)
        history: list[dict[str, Any]] = []
        commit: Commit | None = repo.resolve(revision)
        while commit is not None:
            history.append(
                {
                    "id": commit.id,
                    "title": commit.title,
                    "message": commit.message,
                    "authors": [{"user": commit.author}],
                    "date": commit.date,
                }
            )
            commit = repo.commits[commit.parent] if commit.parent else None
        self._json(history)

    # -- writing ----------------------------------------------------------------------------------------------------

    def create_branch(self, repo_type: str, repo_id: str, branch: str) -> None:
        """``create_branch`` (also ``push_to_hub(revision=...)``): a new branch at ``startingPoint`` (default
        ``main``); an existing one is a 409, which ``exist_ok=True`` swallows."""
        repo = self._repo(repo_type, repo_id, write=True)
        if branch.startswith("refs/") or not re.fullmatch(r"[\w./-]+", branch):
            raise HubError(400, f"Invalid branch name: {branch}")
        if branch in repo.refs:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.refs[branch] = repo.resolve(json.loads(self.body or b"{}").get("startingPoint") or "main").id
        self.store.save(repo)
        self._json({})

    def preupload(self, repo_type: str, repo_id: str, revision: str) -> None:
        """First step of every commit: how to upload each file. LFS for the .gitattributes patterns, files of 10 MB
        or more and binary samples (unless the server runs with ``lfs=False``), regular otherwise. ``oid`` is the
        file's current content hash at `revision`, from which the client drops unchanged files."""
        commit = self._repo(repo_type, repo_id, write=True).resolve(revision)
        patterns = self.store.lfs_patterns(commit)
        files = []
        for file in json.loads(self.body)["files"]:
            path, sample = file["path"], base64.b64decode(file["sample"])
            large = file["size"] >= LFS_MIN_SIZE or b"\0" in sample or matches_any(path, patterns)
            current = commit.files.get(path)
            files.append(
                {
                    "path": path,
                    "uploadMode": "lfs" if self.store.lfs and large else "regular",
                    "shouldIgnore": False,
                    "oid": current.etag if current else None,
                }
            )
        self._json({"files": files})

    def commit(self, repo_type: str, repo_id: str, revision: str) -> None:
        """``create_commit`` (behind ``upload_file``, ``upload_folder`` and ``push_to_hub``): an NDJSON body, a
        ``header`` line then one line per ``file`` (base64 content), ``lfsFile`` (an uploaded LFS object),
        ``deletedFile`` or ``deletedFolder``. With ``?create_pr=1`` the commit goes to a new ``refs/pr/N``."""
        repo = self._repo(repo_type, repo_id, write=True)
        base = repo.resolve(revision)
        create_pr = self.query.get("create_pr") == "1"
        if not create_pr and revision.removeprefix("refs/heads/") not in repo.refs:
            raise HubError(400, f"Can only commit to a branch or a pull request, not {revision}")
        header, *operations = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if header["key"] != "header":
            raise HubError(400, "The first line of a commit must be its header")
        parent_commit = header["value"].get("parentCommit")
        if parent_commit and parent_commit != base.id:
            raise HubError(412, f"A commit has happened since {parent_commit}; {revision} is now at {base.id}")
        files = dict(base.files)
        for operation in operations:
            key, value = operation["key"], operation["value"]
            path = value["path"].strip("/")
            if key == "file":
                content = base64.b64decode(value["content"])
                files[path] = FileEntry.regular(content, self.store.put_object(content))
            elif key == "lfsFile":
                size = self.store.object_size(value["oid"])
                if size is None or value.get("size", size) != size:
                    raise HubError(422, f"LFS object {value['oid']} of {path} was not uploaded")
                files[path] = FileEntry.large(value["oid"], size)
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise self._entry_not_found(path, base)
            elif key == "deletedFolder":
                inside = [name for name in files if name.startswith(path + "/")]
                if not inside:
                    raise self._entry_not_found(path, base)
                for name in inside:
                    del files[name]
            else:
                raise HubError(400, f"Unknown commit operation: {key}")
        ref = revision.removeprefix("refs/heads/")
        if create_pr:
            ref = f"refs/pr/{1 + sum(name.startswith('refs/pr/') for name in repo.refs)}"
        commit = repo.add_commit(ref, base, files, header["value"]["summary"], header["value"].get("description", ""))
        self.store.save(repo)
        url = f"{self.store.endpoint}/{repo.url}"
        answer = {"success": True, "commitOid": commit.id, "commitUrl": f"{url}/commit/{commit.id}"}
        if create_pr:
            answer["pullRequestUrl"] = f"{url}/discussions/{ref.rsplit('/', 1)[-1]}"
        self._json(answer)

    def xet_token(self, repo_type: str, repo_id: str) -> None:
        """Where a client with Xet enabled asks for CAS credentials. This Hub has no Xet storage: a 501, which the
        client reports with this URL (``HTTP status server error (501 Not Implemented), domain: .../xet-write-token``)."""
        raise HubError(501, "hub_server has no Xet storage: set HF_HUB_DISABLE_XET=1 before importing huggingface_hub")

    def lfs_batch(self, repo_type: str, repo_id: str) -> None:
        """git-LFS batch API, upload side: for each object not stored yet, a basic-transfer ``upload`` href on the
        storage origin (which, like a pre-signed URL, needs no token) and a ``verify`` href; objects already stored
        get no actions, so the client skips them."""
        repo = self._repo(repo_type, repo_id, write=True)
        request = json.loads(self.body)
        if request.get("operation") != "upload":
            raise HubError(400, "hub_server only supports LFS uploads; downloads go through /resolve")
        verify = {"href": f"{self.store.endpoint}/{repo.url}.git/info/lfs/objects/verify"}
        objects = []
        for obj in request["objects"]:
            item = {"oid": obj["oid"], "size": obj["size"]}
            if self.store.object_size(obj["oid"]) != obj["size"]:
                upload = {"href": f"{self.store.storage_url}/lfs/{obj['oid']}"}
                item.update(authenticated=True, actions={"upload": upload, "verify": verify})
            objects.append(item)
        self._json({"transfer": "basic", "objects": objects}, content_type="application/vnd.git-lfs+json")

    def lfs_verify(self, repo_type: str, repo_id: str) -> None:
        """git-LFS verify: the client asks, after its upload, whether the object arrived whole."""
        self._repo(repo_type, repo_id, write=True)
        request = json.loads(self.body)
        if self.store.object_size(request["oid"]) != request["size"]:
            raise HubError(404, f"LFS object {request['oid']} of size {request['size']} not found")
        self._json({"success": True})

    # -- downloading ------------------------------------------------------------------------------------------------

    def resolve(self, repo_type: str, repo_id: str, revision: str, path: str) -> None:
        """``hf_hub_download`` (HEAD for the metadata, then GET): ``X-Repo-Commit`` always, a regular file with
        its git blob id as ETag, an LFS file as a redirect to the storage origin with ``X-Linked-Etag`` (sha256) and
        ``X-Linked-Size``. A missing file is EntryNotFound with ``X-Repo-Commit``, which the client caches."""
        commit = self._repo(repo_type, repo_id).resolve(revision)
        entry = commit.files.get(path)
        if entry is None:
            raise self._entry_not_found(path, commit)
        headers = {"X-Repo-Commit": commit.id, "ETag": f'"{entry.oid}"'}
        if entry.lfs:
            headers.update(
                {
                    "Location": f"{self.store.storage_url}/lfs/{entry.sha256}",
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.size),
                }
            )
            self._send(302, b"", headers)
        else:
            self._send(200, self.store.read(entry), headers, content_type="application/octet-stream")

    def storage_put(self, sha256: str) -> None:
        """Storage origin: the basic-transfer PUT of an LFS object, checked against its sha256."""
        if hashlib.sha256(self.body).hexdigest() != sha256:
            raise HubError(400, f"Uploaded content does not hash to {sha256}")
        self.store.put_object(self.body)
        self._send(200, b"", {"ETag": f'"{sha256}"'})

    def storage_get(self, sha256: str) -> None:
        """Storage origin: an LFS object's bytes, where ``/resolve`` redirects."""
        if self.store.object_size(sha256) is None:
            raise HubError(404, f"No LFS object {sha256}")
        content = self.store.object_path(sha256).read_bytes()
        self._send(200, content, {"ETag": f'"{sha256}"'}, content_type="application/octet-stream")


class HubHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP server on a free port of 127.0.0.1, answering with `HubHandler` from a shared `HubStore`."""

    daemon_threads = True

    def __init__(self, store: HubStore):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.store = store


@contextlib.contextmanager
def serve_hub(root: str | os.PathLike[str], *, lfs: bool = True, faults: list[Fault] | None = None) -> Iterator[str]:
    """Run a Hub on 127.0.0.1 with its state under `root`, and yield its endpoint (``http://127.0.0.1:PORT``).

    Two servers share the state: the Hub itself and the storage origin that LFS uploads and downloads use. With
    ``lfs=False`` every file is stored as a regular git file, so clients with Xet enabled can upload too. `faults`
    (a list the test may keep changing) are answered before the requests they match (see [`Fault`])."""
    store = HubStore(Path(root), lfs=lfs)
    if faults is not None:
        store.faults = faults
    servers = [HubHTTPServer(store), HubHTTPServer(store)]
    store.endpoint, store.storage_url = (f"http://127.0.0.1:{server.server_port}" for server in servers)
    threads = [
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub_server", daemon=True)
        for server in servers
    ]
    for thread in threads:
        thread.start()
    try:
        yield store.endpoint
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join()


def client_env(endpoint: str, home: str | os.PathLike[str]) -> dict[str, str]:
    """The environment a client process needs to use the Hub at `endpoint` with its caches in `home`."""
    home = Path(home)
    return {
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": TOKEN,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_DATASETS_CACHE": str(home / "datasets"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
        "TRANSFORMERS_OFFLINE": "0",
        "NO_PROXY": "127.0.0.1",
        "no_proxy": "127.0.0.1",
    }


_CHILD = """
import importlib, json, sys
root, module, name, args, out = sys.argv[1:]
sys.path.insert(0, root)
result = getattr(importlib.import_module(module), name)(*json.loads(args))
with open(out, "w") as file:
    json.dump(result, file)
"""


def run_client(
    endpoint: str, home: str | os.PathLike[str], fn: Callable[..., Any], *args: Any, timeout: float = 300
) -> Any:
    """Call ``fn(*args)`` in a fresh Python process set up by :func:`client_env`, and return its result.

    `fn` must be a module-level function of an importable module (a test file works), and its arguments and result
    JSON-compatible. A failure in the child raises ``RuntimeError`` with the child's output."""
    module = sys.modules[fn.__module__]
    if module.__file__ is None or fn.__module__ == "__main__":
        raise ValueError(f"run_client needs a function from an importable module, not {fn.__module__}.{fn.__name__}")
    root = Path(module.__file__).resolve().parents[fn.__module__.count(".")]
    Path(home).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-c", _CHILD, str(root), fn.__module__, fn.__name__, json.dumps(args), str(out)]
        env = {**os.environ, **client_env(endpoint, home)}
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
        if child.returncode != 0:
            raise RuntimeError(f"{fn.__name__} failed in its client process:\n{child.stdout}\n{child.stderr}")
        return json.loads(out.read_text())
