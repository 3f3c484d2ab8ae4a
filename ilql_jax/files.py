"""Atomic file writes for workdirs: a reader (or a rerun after a kill) sees the old file or the new one, never half.

Each write goes to a temporary name beside the target (`.NAME.tmp-PID`), then
is renamed over it. On a local filesystem the rename is atomic (POSIX); on
object stores (`gs://`, through `etils.epath`) it is a copy, which also never
leaves a partial file under the final name. A kill leaves at most a stray
`.tmp-` file, which nothing reads.

Where a directory needs several files (a tokenizer, an export), write the file
whose presence readers take as proof of the others *last*.
"""

from __future__ import annotations

import os

from etils import epath

__all__ = ["atomic_write_bytes", "atomic_write_text"]


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
