"""The experiments' methods: how they are named ("bc", "pbcNN" (%BC: BC on the top NN% of episodes by return),
"ilql", and the task's own: "ssrl", "mc", "ilql_utt", ...) and how one seed trains them (`train_methods`).

The %BC fraction is read from the name here and nowhere else.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ilql_jax.config import TrainConfig
from ilql_jax.loop import train_and_evaluate

__all__ = ["check", "family", "top_fraction", "train_methods"]

_PBC = re.compile(r"^pbc([1-9][0-9]?)$")
PBC_NAMES = "pbcNN (1 ≤ NN ≤ 99)"


def top_fraction(method: str) -> float | None:
    """%BC's share of the data a method trains on: "pbc20" → 0.2; None for every other method."""
    match = _PBC.match(method)
    return int(match.group(1)) / 100 if match else None


def family(method: str) -> str:
    """The method a name belongs to, as published tables name it: "pbc20" → "pbc"; others unchanged."""
    return "pbc" if top_fraction(method) is not None else method


def check(methods: Sequence[str], names: Sequence[str]) -> None:
    """ValueError listing the `methods` that are neither one of `names` (the task's own, "bc" first) nor "pbcNN"."""
    bad = [m for m in methods if m not in names and top_fraction(m) is None]
    if bad:
        listed = [names[0], PBC_NAMES, *names[1:]]
        raise ValueError(f"unknown method(s) {bad}; use {', '.join(listed[:-1])} or {listed[-1]}")


def train_methods(methods: Sequence[str], workdir, train_config: Callable[[str], TrainConfig],
                  data: Callable[[str], tuple[Mapping, Mapping | None]], returns=None,
                  trained_as: Callable[[str], str] = lambda method: method,
                  ) -> Iterator[tuple[str, str, TrainConfig, Any, float]]:
    """Trains one seed's methods in order, each in `workdir / run` where run = `trained_as(method)` (a method read
    off an earlier method's run reuses its state), on `data(run)` (train and held-out arrays); %BC runs get the
    episodes' `returns`. Yields (method, run, its config, its state, seconds spent training it)."""
    runs = [trained_as(m) for m in methods]
    kept: dict[str, Any] = {}  # the states a later method reads again
    for method, run in zip(methods, runs):
        config = train_config(run)
        start = time.perf_counter()
        state = kept.get(run)
        if state is None:
            state = train_and_evaluate(config, str(workdir / run), *data(run),
                                       returns=returns if config.bc_top_fraction is not None else None)
            if runs.count(run) > 1:
                kept[run] = state
        yield method, run, config, state, time.perf_counter() - start
