"""Scalar metrics to stdout, `metrics.jsonl` and TensorBoard, from process 0 only.

In the workdir::

    metrics.jsonl   one JSON object per write: {"step": 100, "train/loss": 1.23, ...}
    tb/             TensorBoard event files (tensorboardX)

`metrics.jsonl` is appended to, so a resumed run continues the same file.
Non-finite values are written as `NaN`/`Infinity`, which Python's `json` reads back.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import jax
import tensorboardX
import tqdm
from etils import epath

__all__ = ["MetricWriter"]


class MetricWriter:
    """Writes `{name: scalar}` dicts at a step; a no-op where `enabled` is False.

    Args:
      workdir: directory (local or `gs://`) that receives `metrics.jsonl` and `tb/`.
      enabled: whether this process writes; default `jax.process_index() == 0`
        (resolved here, not at import, so `jax.distributed.initialize()` can come first).
      purge_step: on a resume, the first step to be written again; TensorBoard
        drops its older events from that step on, so curves do not double back.
    """

    def __init__(self, workdir: str | epath.Path, *, enabled: bool | None = None, purge_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else bool(enabled)
        if not self.enabled:
            return
        workdir = epath.Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = (workdir / "metrics.jsonl").open("a")
        self._tb = tensorboardX.SummaryWriter(str(workdir / "tb"), purge_step=purge_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Writes one line of scalars (host numbers or 0-d arrays) at `step`."""
        if not self.enabled:
            return
        scalars = {name: float(value) for name, value in metrics.items()}
        # tqdm.write prints above a running progress bar instead of through it.
        tqdm.tqdm.write(f"step {step}: " + " ".join(f"{k}={v:.4g}" for k, v in scalars.items()))
        self._jsonl.write(json.dumps({"step": int(step), **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, int(step))
        self._tb.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
            self.enabled = False  # later writes are no-ops, not errors on closed files

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
