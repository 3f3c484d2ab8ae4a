"""The result files of the Wordle and dialogue benchmarks: `results.json` (the rows) and `results.md` (a table)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence

__all__ = ["Column", "write_table"]

Column = tuple[str, Callable[[dict], str]]  # header, row -> cell


def write_table(workdir: str, rows: Sequence[dict], columns: Sequence[Column], footer: str) -> None:
    """`rows` as JSON, and as a markdown table of `columns` followed by `footer`."""
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(list(rows), f, indent=2)
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write("\n".join(lines + ["", footer]) + "\n")
