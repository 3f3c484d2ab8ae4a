"""A run's files, local or in an object store (`gs://`), from one process or from many.

Atomic writes: a reader (or a rerun after a kill) sees the old file or the new
one, never half. Each write goes to a temporary name beside the target
(`.NAME.tmp-PID`), then is renamed over it. On a local filesystem the rename
is atomic (POSIX); on object stores (`gs://`, through `etils.epath`; install
the `gcs` extra) it is a copy, which also never leaves a partial file under
the final name. A kill leaves at most a stray `.tmp-` file, which nothing
reads. Files are always written whole, never appended to: object stores
cannot append.

Where a directory needs several files (a tokenizer, an export), write the file
whose presence readers take as proof of the others *last*.

Multi-host: every process runs the same program on a shared workdir. Files
that describe the run as a whole (splits, tokenizer, caches, results, plots)
are *shared*: `write_text` / `write_bytes` / `write_json` write them from
process 0 only, and `sync` is the barrier after which every process may read
what process 0 wrote. Checkpoints are the exception: every process writes its
own shards (`checkpoint.py`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
from etils import epath

__all__ = ["atomic_write_bytes", "atomic_write_text", "is_writer", "read_json", "sync", "write_bytes",
           "write_json", "write_text"]


def _temporary(path: epath.Path) -> epath.Path:
    return path.parent / f".{path.name}.tmp-{os.getpid()}"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename; creates the parent directory."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    tmp.write_bytes(data)
    tmp.replace(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """`atomic_write_bytes` of `text` as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def is_writer() -> bool:
    """Whether this process writes the shared files: process 0."""
    return jax.process_index() == 0


def sync(name: str) -> None:
    """Barrier across processes (a no-op with one): e.g. after process 0 wrote files the others read."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def write_bytes(path: str | os.PathLike, data: bytes, *, shared: bool = True) -> None:
    """`atomic_write_bytes`, of a shared file from process 0 only (see the module docstring);
    `shared=False` writes from this process (its own file, or one it alone writes)."""
    if shared and not is_writer():
        return
    atomic_write_bytes(path, data)


def write_text(path: str | os.PathLike, text: str, *, shared: bool = True) -> None:
    """`write_bytes` of `text` as UTF-8."""
    write_bytes(path, text.encode("utf-8"), shared=shared)


def write_json(path: str | os.PathLike, obj: Any, *, shared: bool = True, **dump_kwargs) -> None:
    """`obj` as JSON in `path` (`write_bytes`)."""
    write_text(path, json.dumps(obj, **dump_kwargs) + "\n", shared=shared)


def read_json(path: str | os.PathLike) -> Any:
    """The JSON object in `path`; a ValueError naming the file when it is not JSON."""
    path = epath.Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno}: not valid JSON ({e.msg})") from None
