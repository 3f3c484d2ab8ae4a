"""A workdir: claimed by one `ilql-jax train` at a time, and read back (tokenizer, ILQL config, newest checkpoint).

`claim(workdir)` holds `WORKDIR/.lock` while a run trains: an exclusive
`flock` on it (the kernel drops it when the holder exits, however it exits)
and the holder's pid and host inside, for the message a second process gets.
A lock file whose lock nobody holds, left by a process that was killed, is
taken over. A run refused before it trained anything (its `bc/` does not exist)
leaves the workdir as it found it: what it created is removed, options.json
put back.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import socket
from collections.abc import Iterator
from typing import Any, NamedTuple

from ilql_jax import files, tokenizers
from ilql_jax.config import ConfigError, TrainConfig, config_from_dict

__all__ = ["LOCK_FILE", "Run", "claim", "latest_step", "load_run", "read_config"]

LOCK_FILE = ".lock"


class Run(NamedTuple):
    tokenizer: Any
    config: TrainConfig
    state: Any  # ILQLState


def read_config(workdir: str, run: str = "ilql") -> TrainConfig:
    """The TrainConfig the loop recorded in `workdir/run/config.json`; ConfigError if there is none."""
    path = os.path.join(workdir, run, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{workdir}: no {run}/config.json; is this a workdir `ilql-jax train` wrote?")
    with open(path, encoding="utf-8") as f:
        return config_from_dict(TrainConfig, json.load(f))


def load_run(workdir: str, run: str = "ilql") -> Run:
    """The tokenizer, config and newest-checkpoint state of `workdir/run`."""
    from ilql_jax import checkpoint, sharding

    config = read_config(workdir, run)
    tok_dir = os.path.join(workdir, "tokenizer")
    if not os.path.isfile(os.path.join(tok_dir, tokenizers.CONFIG_FILE)):
        raise ConfigError(f"{workdir}: no tokenizer/{tokenizers.CONFIG_FILE}; is this a workdir `ilql-jax train` "
                          "wrote?")
    tok = tokenizers.load_tokenizer(tok_dir)
    if not os.path.isdir(os.path.join(workdir, run, checkpoint.CHECKPOINT_DIR)):
        raise ConfigError(f"{workdir}: {run}/ holds no checkpoint yet; run (or resume) `ilql-jax train` first")
    abstract = checkpoint.abstract_like(sharding.abstract_state(config.step))
    state, _ = checkpoint.restore(os.path.abspath(os.path.join(workdir, run)), abstract)
    return Run(tok, config, state)


def latest_step(workdir: str, run: str) -> int | None:
    """The newest checkpoint step of `workdir/run`, or None (read-only: creates nothing)."""
    from ilql_jax import checkpoint

    directory = os.path.join(workdir, run)
    if not os.path.isdir(os.path.join(directory, checkpoint.CHECKPOINT_DIR)):
        return None
    with checkpoint.Checkpointer(os.path.abspath(directory), cfg=None) as ckpt:
        return ckpt.latest_step()


def _holder(fd: int) -> dict:
    """The {"pid", "host"} a lock file holds ({} when empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        holder = json.loads(os.read(fd, 4096).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _lock(workdir: str) -> tuple[int, dict]:
    """An fd holding the exclusive lock of `workdir`'s lock file, and the holder it names from before (stale)."""
    import fcntl  # POSIX only, as JAX's CPU and accelerator builds are

    path = os.path.join(workdir, LOCK_FILE)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = f"process {holder.get('pid', '?')}" + (f" on {holder['host']}" if "host" in holder else "")
            raise ConfigError(f"{workdir} is in use by {who} (it holds {path}); wait for it to end or stop it, "
                              "or use another --workdir") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # else its holder released (unlinked) it between our open and flock: try the new file
            break
        os.close(fd)
    previous = _holder(fd)
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
    return fd, previous


def _unlock(workdir: str, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(workdir, LOCK_FILE))  # before the close: nobody locks the old file after us
    os.close(fd)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def claim(workdir: str, keep: str = "bc") -> Iterator[None]:
    """Holds `workdir`'s lock for the block (ConfigError naming the holder's pid if another process has it).

    If the block raises an Exception while `workdir/keep` does not exist (nothing trained yet), what the
    block created in `workdir` is removed, the options.json it may have rewritten is put back, and a
    workdir this call created is removed with them.
    """
    existed = os.path.isdir(workdir)
    os.makedirs(workdir, exist_ok=True)
    before = set(os.listdir(workdir))
    options = os.path.join(workdir, "options.json")
    options_before = pathlib.Path(options).read_bytes() if os.path.isfile(options) else None
    try:
        fd, previous = _lock(workdir)
    except BaseException:
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)
        raise
    if previous.get("pid") not in (None, os.getpid()):
        print(f"{workdir}: took over the lock of process {previous['pid']}, which no longer holds it (it ended "
              "without releasing it)")
    try:
        yield
    except Exception:
        if not os.path.exists(os.path.join(workdir, keep)):
            for name in set(os.listdir(workdir)) - before - {LOCK_FILE}:
                _remove(os.path.join(workdir, name))
            if options_before is not None:
                files.atomic_write_bytes(options, options_before)
        raise
    finally:
        _unlock(workdir, fd)
        if not existed:
            with contextlib.suppress(OSError):
                os.rmdir(workdir)  # only if empty: a run that trained keeps it
