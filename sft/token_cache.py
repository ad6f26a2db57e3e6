"""A cache directory that is built once and never seen half-written, by any number of processes.

`build_once(path, build)` builds `path` unless it exists. Several processes may ask for the same
cache at once (two jobs, or nodes sharing a file system): a lock file (`.NAME.lock` beside it) makes
the others wait for the one that builds, and the builder writes into a private temporary directory
beside `path` and publishes it with one atomic rename. A reader therefore sees no directory or a
complete one, even where the file system does not honour the lock; if two builders finish, the
first rename wins and the second copy is discarded. `wait_for(path, ...)` is what a process that
must not build (every rank of a launch but the global rank 0) does instead.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from sft.errors import UserError


def build_once(path: Path, build: Callable[[Path], None]) -> bool:
    """Run `build(tmp)` to fill a new directory and publish it as `path`, unless `path` exists.
    True if this call published it."""
    if path.is_dir():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent / f".{path.name}.lock")):
        if path.is_dir():
            return False
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
        try:
            build(tmp)
            return publish(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def publish(tmp: Path, path: Path) -> bool:
    """Rename the complete directory `tmp` to `path` (atomic); False if another process was first."""
    try:
        os.rename(tmp, path)
    except OSError as err:
        if err.errno in (errno.EEXIST, errno.ENOTEMPTY) and path.is_dir():
            return False
        raise
    return True


def wait_for(path: Path, timeout: float, what: str, poll_seconds: float = 2.0) -> None:
    """Wait until another process has published `path`; a UserError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not path.is_dir():
        if time.monotonic() > deadline:
            raise UserError(
                f"{what} not ready after {timeout:.0f} s of waiting for the process of rank 0 to "
                f"write it (is the directory on a file system every node shares?)",
                file=str(path),
                expected="tokenize once before launching: dlm-sft train RECIPE --tokenize-only",
            )
        time.sleep(poll_seconds)
