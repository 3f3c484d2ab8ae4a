"""A filesystem double without append, as object stores (`gs://`) are: under a root directory, files
can be created, rewritten whole, renamed and read, but opening one to append raises OSError.

In-process: `with refuse_append(root): ...`. As a command (for subprocess tests)::

    python tests/no_append.py ROOT MODULE [ARGS...]    # python -m MODULE ARGS, appends under ROOT refused
"""

from __future__ import annotations

import builtins
import contextlib
import io
import os
import runpy
import sys


def _under(path, root: str) -> bool:
    if isinstance(path, int):  # a file descriptor
        return False
    path = os.path.abspath(os.fsdecode(path))
    return path == root or path.startswith(root + os.sep)


@contextlib.contextmanager
def refuse_append(root: str | os.PathLike):
    """Within the block, `open(..., "a")`, `io.open` and `os.open(..., O_APPEND)` of a path under `root` raise."""
    root = os.path.abspath(os.fspath(root))
    original_open, original_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *args, **kwargs):
        if "a" in mode and _under(file, root):
            raise OSError(f"{file}: this filesystem does not support appending (mode {mode!r})")
        return original_open(file, mode, *args, **kwargs)

    def guarded_os_open(path, flags, *args, **kwargs):
        if flags & os.O_APPEND and _under(path, root):
            raise OSError(f"{path}: this filesystem does not support appending (O_APPEND)")
        return original_os_open(path, flags, *args, **kwargs)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    try:
        yield
    finally:
        builtins.open = io.open = original_open
        os.open = original_os_open


if __name__ == "__main__":
    root, module, *args = sys.argv[1:]
    with refuse_append(root):
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
