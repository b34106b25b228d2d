"""One run per output folder: a lock file naming the live run that owns the folder, and the refusal of a folder that
holds another run's results."""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from pathlib import Path


logger = logging.getLogger(__name__)

LOCK_NAME = "_minillava_run.lock"  # "_": the Hub pushes skip it
# Files and folders that only a training run writes: their presence means the folder holds a run's results.
RUN_OUTPUTS = ("config.json", "adapter_config.json", "trainer_state.json", "training_args.json", "README.md")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user
        return True
    return True


class RunLock:
    """`output_dir/_minillava_run.lock`, created exclusively with the owner's pid, host and start time.

    A second run on the same folder is refused while the owner lives. A lock left by a run that was killed (its pid
    gone on this host) is taken over with a warning; one from another host is refused, as this host cannot tell
    whether that run still lives (delete the file once it has stopped).
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir) / LOCK_NAME
        self.owned = False

    def _owner(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                pid, host = owner.get("pid"), owner.get("host")
                if host == me["host"] and isinstance(pid, int) and not _alive(pid):
                    logger.warning("Taking over %s: its run (pid %s, started %s) has stopped.", self.path, pid,
                                   owner.get("started"))  # fmt: skip
                    self.path.unlink(missing_ok=True)
                    continue
                raise RuntimeError(
                    f"{self.path.parent} is in use by another run (pid {pid} on {host}, started "
                    f"{owner.get('started')}): use another --output_dir, or wait for that run to end (if it has "
                    f"stopped on another machine, delete {self.path})."
                ) from None
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                json.dump(me, file)
            self.owned = True
            return self
        raise RuntimeError(f"Could not lock {self.path}")

    def release(self) -> None:
        if self.owned and self._owner().get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)
        self.owned = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool = False, resume: bool = False) -> None:
    """Refuses an `output_dir` that holds another run's results (a model, a trainer state, checkpoints), unless the
    run resumes from it or `overwrite` says the old results may be replaced."""
    folder = Path(output_dir)
    if not folder.is_dir() or resume:
        return
    found = sorted(
        path.name for path in folder.iterdir() if path.name in RUN_OUTPUTS or path.name.startswith("checkpoint-")
    )
    if not found:
        return
    if overwrite:
        logger.warning("Overwriting the results of an earlier run in %s (%s).", folder, ", ".join(found))
        return
    raise FileExistsError(
        errno.EEXIST,
        f"{folder} already holds the results of another run ({', '.join(found[:5])}"
        f"{', ...' if len(found) > 5 else ''}): pass --resume_from_checkpoint true to continue it, "
        "--overwrite_output_dir to replace it, or choose another --output_dir",
    )


__all__ = ["LOCK_NAME", "RunLock", "check_output_dir"]
