"""How the experiments name a method: "bc", "pbcNN" (%BC: BC on the top NN% of episodes by return), "ilql", and
the task's own ("ssrl", "mc", "ilql_utt", ...).

The %BC fraction is read from the name here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

__all__ = ["check", "family", "top_fraction"]

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
