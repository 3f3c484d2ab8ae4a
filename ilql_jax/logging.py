"""Scalar metrics to stdout, `metrics.jsonl` and TensorBoard, from process 0 only.

In the workdir (local or `gs://`)::

    metrics.jsonl   one JSON object per write: {"step": 100, "train/loss": 1.23, ...}
    metrics.parts/  while a run writes: one small file per write, the lines not yet in metrics.jsonl
    tb/             TensorBoard event files (tensorboardX)

Nothing is appended to (object stores cannot append; gcsfs silently
overwrites instead), and no write rewrites earlier lines: each write is a new
part file (`files.write_text`: written beside it and renamed locally, one
object on `gs://`). A run folds its parts into `metrics.jsonl` once, when it
closes; a run killed before that leaves them, and the next one folds them in
as it starts (`read_metrics` reads both meanwhile). A resumed run starts from
the lines already there, less those at or past its first step (it logs them
again) and less any line cut short. Non-finite values are written as
`NaN`/`Infinity`, which Python's `json` reads back.

TensorBoard: each process that writes opens its own events file in `tb/`, at
its first write (a rerun with nothing left to train adds none). A resumed run
does not append to the previous file, since an events file is a stream of
length-prefixed records: one cut mid-record by a kill would make TensorBoard
drop everything appended after the cut, and object stores (`gs://`) cannot
append at all. TensorBoard reads every events file of a directory as one run;
`purge_step` makes the resumed file replace the old events from that step on.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import jax
import tensorboardX
import tqdm
from etils import epath

from ilql_jax import files

__all__ = ["MetricWriter", "read_metrics"]

METRICS_FILE = "metrics.jsonl"
PARTS_DIR = "metrics.parts"


def _line_step(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.nan  # a line cut short by a crash: kept by no comparison


def _read_lines(workdir: epath.Path) -> tuple[list[str], list[epath.Path]]:
    """`metrics.jsonl`'s lines then the parts' lines in write order, and the part files."""
    path, parts = workdir / METRICS_FILE, workdir / PARTS_DIR
    lines = path.read_text().splitlines(keepends=True) if path.exists() else []
    # Written atomically: a name starting with "." is a temporary a kill left behind.
    names = sorted((p for p in parts.iterdir() if not p.name.startswith(".")), key=lambda p: p.name) \
        if parts.exists() else []
    for part in names:
        lines += part.read_text().splitlines(keepends=True)
    return [line if line.endswith("\n") else line + "\n" for line in lines], names


def read_metrics(workdir: str | epath.Path) -> list[dict[str, Any]]:
    """Every whole line a run has written to `workdir`, as dicts, in order (parts not yet folded in included)."""
    lines, _ = _read_lines(epath.Path(workdir))
    return [json.loads(line) for line in lines if not math.isnan(_line_step(line))]


class MetricWriter:
    """Writes `{name: scalar}` dicts at a step; a no-op where `enabled` is False.

    Args:
      workdir: directory (local or `gs://`) that receives `metrics.jsonl` and `tb/`.
      enabled: whether this process writes; default `jax.process_index() == 0`
        (resolved here, not at import, so `jax.distributed.initialize()` can come first).
      purge_step: on a resume, the first step to be written again: lines of
        `metrics.jsonl` from it on are dropped (`dropped` counts them), and
        TensorBoard drops its older events from it on, so curves do not double back.
    """

    def __init__(self, workdir: str | epath.Path, *, enabled: bool | None = None, purge_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        self.dropped = 0
        if not self.enabled:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._path, self._parts = workdir / METRICS_FILE, workdir / PARTS_DIR
        lines, self._part_files = _read_lines(workdir)
        last = math.inf if purge_step is None else purge_step - 1
        self._lines = [line for line in lines if _line_step(line) <= last]
        self.dropped = len(lines) - len(self._lines)
        self._folded = not (self.dropped or self._part_files)  # metrics.jsonl holds self._lines
        self._fold()
        self._tb_dir, self._purge_step = str(workdir / "tb"), purge_step
        self._tb: tensorboardX.SummaryWriter | None = None  # opened at the first write

    def _fold(self) -> None:
        """Writes every line into `metrics.jsonl` (once per run, not per write) and removes the parts."""
        if not self._folded:
            files.write_text(self._path, "".join(self._lines), shared=False)  # `enabled` says who writes
            self._parts.rmtree(missing_ok=True)
            self._part_files, self._folded = [], True

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one line of scalars (host numbers or 0-d arrays) at `step`."""
        if not self.enabled:
            return
        scalars = {name: float(value) for name, value in metrics.items()}
        # tqdm.write prints above a running progress bar instead of through it.
        tqdm.tqdm.write(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        line = json.dumps({"step": int(step), **scalars}) + "\n"
        # Named by write order (steps may repeat, e.g. a final eval at the last train step).
        part = self._parts / f"{len(self._part_files):08d}.jsonl"
        files.write_text(part, line, shared=False)
        self._lines.append(line)
        self._part_files.append(part)
        self._folded = False
        if self._tb is None:
            self._tb = tensorboardX.SummaryWriter(self._tb_dir, purge_step=self._purge_step)
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._fold()
            if self._tb is not None:
                self._tb.close()
            self.enabled = False  # later writes are no-ops, not errors on closed files

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
