"""The result files of the Wordle and dialogue benchmarks: `results.json` (the rows) and `results.md` (a table)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from etils import epath

from ilql_jax import files

__all__ = ["Column", "write_table"]

Column = tuple[str, Callable[[dict], str]]  # header, row -> cell


def write_table(workdir: str | epath.PathLike, rows: Sequence[dict], columns: Sequence[Column], footer: str) -> None:
    """`rows` as JSON, and as a markdown table of `columns` followed by `footer` (shared files: process 0)."""
    workdir = epath.Path(workdir)
    files.write_json(workdir / "results.json", list(rows), indent=2)
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in rows]
    files.write_text(workdir / "results.md", "\n".join(lines + ["", footer]) + "\n")
