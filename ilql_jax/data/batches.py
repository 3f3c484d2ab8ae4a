"""Seeded, resumable host batches over stacked arrays, and %BC episode selection.

The batch at global step ``k`` is a pure function of ``(seed, k)``: epoch
``e = k // steps_per_epoch`` is a fresh permutation drawn from
``np.random.default_rng([seed, e])`` and step ``k`` takes the
``k % steps_per_epoch``-th slice of it. Resuming a run at step ``k`` therefore
needs only the step number stored in the checkpoint, and yields exactly the
batches a straight run yields from ``k`` on (data iteration resumable by
step).

Choices:
* drop_remainder: every batch has the static shape ``[batch_size, ...]`` (no
  recompilation); the ``N % batch_size`` examples left over in an epoch are
  skipped for that epoch only, and the next permutation draws them again.
* ``N < batch_size`` raises: padding a batch with repeats would silently
  reweight examples, so the caller should lower the batch size instead.
* Multi-host: ``batch_size`` is the global batch; process ``p`` of ``P`` gets
  rows ``[p * B/P, (p+1) * B/P)`` of the same global batch, so the global
  batch does not depend on the number of hosts.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from ilql_jax.data.batch import Batch
from ilql_jax.data.episodes import Episode, episode_return

__all__ = [
    "BatchIterator",
    "batches",
    "epoch_permutation",
    "top_fraction",
    "top_fraction_indices",
]


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The order of examples in ``epoch``: a function of ``(seed, epoch)`` only."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


class BatchIterator(Iterator[dict[str, np.ndarray]]):
    """Endless, seeded, resumable iterator of ``[batch_size // process_count, ...]`` batches.

    Args:
      arrays: name -> array with a shared leading dimension N (e.g. the
        ``[N, T]`` output of ``episodes_to_arrays``), or a `Batch` of them
        (then the batches are `Batch`es too).
      batch_size: the global batch size B; needs ``N >= B``.
      seed: a non-negative int.
      start_step: the global step of the first batch yielded (for resuming).
      process_index, process_count: this host's slice of each global batch
        (``jax.process_index()``, ``jax.process_count()``); B must divide evenly.
    """

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray] | Batch,
        batch_size: int,
        seed: int,
        start_step: int = 0,
        *,
        process_index: int = 0,
        process_count: int = 1,
    ):
        self._as_batch = isinstance(arrays, Batch)
        arrays = arrays._asdict() if self._as_batch else arrays
        if not isinstance(arrays, Mapping) or not arrays:
            raise ValueError("arrays must be a non-empty mapping of name -> array")
        self._arrays = {name: np.asarray(a) for name, a in arrays.items()}
        sizes = {name: (a.shape[0] if a.ndim else None) for name, a in self._arrays.items()}
        if None in sizes.values() or len(set(sizes.values())) != 1:
            raise ValueError(
                f"all arrays need the same leading (example) dimension, got {sizes}"
            )
        self.num_examples = next(iter(sizes.values()))
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.seed = _check_int("seed", seed, 0)  # default_rng rejects negative seeds
        self.process_count = _check_int("process_count", process_count, 1)
        self.process_index = _check_int("process_index", process_index, 0)
        if self.process_index >= self.process_count:
            raise ValueError(
                f"process_index {process_index} out of range for process_count {process_count}"
            )
        if self.batch_size % self.process_count:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by process_count {process_count}"
            )
        if self.num_examples < self.batch_size:
            raise ValueError(
                f"batch_size {batch_size} exceeds the number of examples "
                f"{self.num_examples}; lower batch_size (batches are never padded with repeats)"
            )
        self.steps_per_epoch = self.num_examples // self.batch_size
        self.local_batch_size = self.batch_size // self.process_count
        self.step = _check_int("start_step", start_step, 0)
        self._cached_epoch: int | None = None
        self._cached_perm: np.ndarray | None = None

    def _permutation(self, epoch: int) -> np.ndarray:
        # One permutation per epoch: cache it, since consecutive steps share it.
        if epoch != self._cached_epoch:
            self._cached_perm = epoch_permutation(self.num_examples, self.seed, epoch)
            self._cached_epoch = epoch
        return self._cached_perm

    def indices_at(self, step: int) -> np.ndarray:
        """Example indices of this process's part of the batch at global ``step``."""
        step = _check_int("step", step, 0)
        epoch, i = divmod(step, self.steps_per_epoch)
        start = i * self.batch_size + self.process_index * self.local_batch_size
        return self._permutation(epoch)[start : start + self.local_batch_size]

    def batch_at(self, step: int) -> dict[str, np.ndarray] | Batch:
        """This process's batch at global ``step`` (pure in ``(seed, step)``)."""
        idx = self.indices_at(step)
        rows = {name: a[idx] for name, a in self._arrays.items()}
        return Batch(**rows) if self._as_batch else rows

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray] | Batch:
        batch = self.batch_at(self.step)
        self.step += 1
        return batch

    def state(self) -> dict[str, int]:
        """What a checkpoint must store to resume: the next step (and the seed, to check)."""
        return {"step": self.step, "seed": self.seed}

    def restore(self, state: Mapping[str, int]) -> None:
        """Continue from a ``state()``; refuses a state saved under another seed."""
        if int(state["seed"]) != self.seed:
            raise ValueError(
                f"checkpointed data seed {state['seed']} differs from "
                f"this iterator's seed {self.seed}"
            )
        self.step = _check_int("step", int(state["step"]), 0)


def batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int,
    start_step: int = 0,
    **kwargs,
) -> BatchIterator:
    """``BatchIterator(arrays, batch_size, seed, start_step, **kwargs)``: endless batches."""
    return BatchIterator(arrays, batch_size, seed, start_step, **kwargs)


# ---------------------------------------------------------------------------
# %BC: the top fraction of episodes by return (docs/algorithm.md §6 baselines)
# ---------------------------------------------------------------------------


def _check_fraction(fraction) -> float:
    if isinstance(fraction, (bool, np.bool_)) or not isinstance(fraction, numbers.Real):
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:  # also rejects NaN
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    return fraction


def top_fraction_indices(returns: Sequence[float], fraction: float) -> np.ndarray:
    """Indices of the ``ceil(fraction * N)`` (at least 1) highest returns, in data order.

    Ties at the cut are broken by data order (earlier first), so the selection
    is deterministic.
    """
    fraction = _check_fraction(fraction)
    returns = np.asarray(returns, dtype=np.float64)
    if returns.ndim != 1 or returns.size == 0:
        raise ValueError("top_fraction needs a non-empty 1-D sequence of returns")
    if not np.all(np.isfinite(returns)):
        raise ValueError("top_fraction: returns must be finite")
    n = returns.size
    # The small slack keeps e.g. 0.3 * 10 = 3.0000000000000004 from becoming 4.
    k = max(1, math.ceil(fraction * n - 1e-9))
    # Stable sort on -return: equal returns keep data order.
    order = np.argsort(-returns, kind="stable")
    return np.sort(order[:k])


def top_fraction(episodes: Sequence[Episode], fraction: float) -> list[Episode]:
    """The top ``fraction`` of episodes by undiscounted return, in data order (for %BC)."""
    episodes = list(episodes)
    if not episodes:
        raise ValueError("top_fraction got no episodes (empty list)")
    idx = top_fraction_indices([episode_return(ep) for ep in episodes], fraction)
    return [episodes[i] for i in idx]
