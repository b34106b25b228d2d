"""`minillava push DIR --hub_model_id ID`: uploads a trained output folder to the Hub, retrying transient errors.

The same upload runs at the end of `minillava sft --push_to_hub` and for the pushes during training, so a push that
failed there (the Hub down for longer than the retries) is finished later from the output folder with one command:
```bash
minillava push checkpoints/llava-1.5-7b-lora --hub_model_id your-name/llava-1.5-7b-lora
```
It is idempotent: files the repo already holds are not sent again, and a folder the repo already matches makes no
commit. What is never uploaded: checkpoint folders, hidden and `_`-prefixed files (the run lock, partial saves), and
pickles (`*.bin`, `*.pt`, `*.pth`, `*.pkl`: optimizer, scheduler and RNG states stay local, for resuming).
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


logger = logging.getLogger(__name__)

# What a push never uploads: the Trainer's own patterns ("_*", "checkpoint-*"), hidden files, and every pickle.
PUSH_IGNORE_PATTERNS = ["_*", "checkpoint-*", ".*", "*/.*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle"]
PICKLES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


def is_ignored(name: str) -> bool:
    """Whether a push leaves the file `name` (a path relative to the pushed folder) out."""
    return any(fnmatch.fnmatch(name, pattern) for pattern in PUSH_IGNORE_PATTERNS)


# The answers of a Hub that is busy or briefly down (the status codes huggingface_hub itself retries for downloads).
TRANSIENT_STATUS = (408, 429, 500, 502, 503, 504)
# Network failures worth retrying, by class name (httpx's and requests', without importing either).
TRANSIENT_ERRORS = {
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "NetworkError",
    "ReadError",
    "ReadTimeout",
    "RemoteDisconnected",
    "RemoteProtocolError",
    "TimeoutException",
    "WriteError",
    "WriteTimeout",
}
MAX_DELAY = 300.0  # seconds: the longest wait between two attempts, whatever Retry-After says


class PushError(RuntimeError):
    """A push that failed after its retries; the folder it was uploading is complete and can be pushed later."""

    def __init__(self, folder: str | Path, repo_id: str | None, error: BaseException):
        self.folder, self.repo_id = str(folder), repo_id
        super().__init__(
            f"the model is saved in {folder}, but pushing it to {repo_id} failed: {error}. Finish the upload "
            f"with: minillava push {folder} --hub_model_id {repo_id}"
        )


def retry_delay(error: BaseException, attempt: int, backoff: float) -> float | None:
    """Seconds to wait before attempt `attempt + 1` after `error`, or None when the error is not transient: the
    server's `Retry-After` when it sent one, else `backoff * 2**attempt` (at most `MAX_DELAY`)."""
    seen: BaseException | None = error
    while seen is not None:
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if status is not None:
            if status not in TRANSIENT_STATUS:
                return None
            header = (getattr(response, "headers", None) or {}).get("Retry-After", "")
            if str(header).strip().isdigit():
                return min(float(header), MAX_DELAY)
            return min(backoff * 2**attempt, MAX_DELAY)
        if type(seen).__name__ in TRANSIENT_ERRORS or isinstance(seen, (ConnectionError, TimeoutError)):
            return min(backoff * 2**attempt, MAX_DELAY)
        seen = seen.__cause__ or seen.__context__
    return None


def with_retries(call: Callable[[], Any], what: str, retries: int = 10, backoff: float = 2.0) -> Any:
    """`call()`, repeated up to `retries` more times while it fails with a transient Hub error (see
    [`retry_delay`]); every failed attempt is logged. The last error is raised, its `attempts` saying how many
    calls were made."""
    attempt = 0
    while True:
        try:
            return call()
        except Exception as error:
            delay = retry_delay(error, attempt, backoff)
            if delay is None or attempt == retries:
                with contextlib.suppress(AttributeError):  # an exception type with __slots__ takes no attribute
                    error.attempts = attempt + 1
                raise
            logger.warning(
                "%s failed (attempt %d of %d: %s); retrying in %.1f s.", what, attempt + 1, retries + 1, error, delay
            )
            time.sleep(delay)
            attempt += 1


def upload_folder(
    api,
    folder: str | Path,
    repo_id: str,
    commit_message: str,
    revision: str | None = None,
    path_in_repo: str | None = None,
    retries: int = 10,
    backoff: float = 2.0,
):
    """Uploads `folder` to `repo_id` with `huggingface_hub`'s `upload_folder`, without checkpoints, hidden files or
    pickles (`PUSH_IGNORE_PATTERNS`), retrying transient errors; returns the `CommitInfo`."""
    return with_retries(
        lambda: api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            path_in_repo=path_in_repo,
            commit_message=commit_message,
            revision=revision,
            ignore_patterns=PUSH_IGNORE_PATTERNS,
        ),
        f"Pushing {folder} to {repo_id}",
        retries=retries,
        backoff=backoff,
    )


def push(
    folder: str | Path,
    repo_id: str,
    commit_message: str = "Upload with minillava push",
    revision: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    retries: int = 10,
    backoff: float = 2.0,
):
    """Creates `repo_id` if needed and uploads the output folder `folder` (see [`upload_folder`])."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no trained model (no config.json or adapter_config.json)")
    local_only = sorted(path.name for path in folder.iterdir() if is_ignored(path.name) and path.suffix in PICKLES)
    if local_only:
        logger.warning("Not uploaded (pickles stay local): %s", ", ".join(local_only))
    api = HfApi(token=token, library_name="minillava")
    repo = with_retries(
        lambda: api.create_repo(repo_id, private=private, exist_ok=True), f"Creating {repo_id}", retries, backoff
    )
    return upload_folder(api, folder, repo.repo_id, commit_message, revision, retries=retries, backoff=backoff)


def main(argv: list[str] | None = None) -> None:
    """`minillava push DIR --hub_model_id ID`."""
    parser = argparse.ArgumentParser(prog="minillava push", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="The output folder of `minillava sft` (or of `merge` / `build`).")
    parser.add_argument("--hub_model_id", required=True, help="The repo to upload to (created when missing).")
    parser.add_argument("--revision", default=None, help="The branch to commit to (default: main).")
    parser.add_argument("--private", action="store_true", help="Create the repo private (if it does not exist).")
    parser.add_argument("--commit_message", default="Upload with minillava push")
    parser.add_argument("--retries", type=int, default=10, help="Attempts after the first on transient errors.")
    parser.add_argument("--backoff", type=float, default=2.0, help="First wait between attempts, in seconds.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    commit = push(
        args.folder,
        args.hub_model_id,
        commit_message=args.commit_message,
        revision=args.revision,
        private=args.private or None,
        retries=args.retries,
        backoff=args.backoff,
    )
    print(f"Pushed {args.folder} to {args.hub_model_id}: {getattr(commit, 'commit_url', commit)}")


if __name__ == "__main__":
    sys.exit(main())


__all__ = [
    "PUSH_IGNORE_PATTERNS",
    "PushError",
    "is_ignored",
    "main",
    "push",
    "retry_delay",
    "upload_folder",
    "with_retries",
]
