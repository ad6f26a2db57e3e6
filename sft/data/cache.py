"""A cache directory that is built once and never seen half-written, by any number of processes.

`build_once(path, build)` builds `path` unless it exists. Several processes may ask for the same
cache at once (two jobs, or nodes sharing a file system): a lock file (`.NAME.lock` beside it) makes
the others wait for the one that builds, and the builder writes into a private temporary directory
beside `path` and publishes it with one atomic rename. A reader therefore sees no directory or a
complete one, even where the file system does not honour the lock; if two builders finish, the
first rename wins and the second copy is discarded. `wait_for(path, ...)` is what a process that
must not build (every rank of a launch but the global rank 0) does instead.

`cache_key` names a tokenized split by everything it depends on (rows, tokenizer, template, policies).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from filelock import FileLock

from sft.errors import UserError

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from sft.config import DataSettings


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


CACHE_VERSION = 4
"""Bumped when tokenization or the cache layout changes, so old caches are not reused."""


def cache_key(
    rows: datasets.Dataset, tokenizer: PreTrainedTokenizerBase, settings: DataSettings, eos_token_id: int
) -> str:
    """What the tokenized data depends on: the rows, the tokenizer and its chat template, the
    length limit and the multi-turn and truncation policies."""
    vocab = (
        tokenizer.backend_tokenizer.to_str()
        if tokenizer.is_fast
        else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    )
    parts = {
        "version": CACHE_VERSION,
        "rows": rows_identity(rows),
        "tokenizer": hashlib.sha256(vocab.encode()).hexdigest(),
        "chat_template": tokenizer.chat_template,
        "eos": eos_token_id,
        "max_length": settings.max_length,
        "multi_turn": settings.multi_turn,
        "truncation": settings.truncation,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


def rows_identity(rows: datasets.Dataset) -> Any:
    """The rows as every process and node names them: the Arrow files they are read from and their
    sizes, else (rows in memory, or a selection of them) datasets' fingerprint, which for a dataset
    opened from a file can be random and so differ between the ranks of one launch."""
    files = [entry["filename"] for entry in rows.cache_files]
    if not files or rows._indices is not None:
        return rows._fingerprint
    return [(file, os.path.getsize(file)) for file in files]
