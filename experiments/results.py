"""The result files of the benchmarks: `results.json` (every seed's rows and the rows aggregated over seeds) and
`results.md` (the aggregated table)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from etils import epath

from ilql_jax import files

__all__ = ["Column", "spread", "write_table"]

Column = tuple[str, Callable[[dict], str]]  # header, row -> cell


def write_table(workdir: str | epath.PathLike, table: Sequence[dict], columns: Sequence[Column], footer: str, *,
                seed_rows: Sequence[dict], **extra) -> None:
    """results.json `{"aggregate": table, "seeds": seed_rows, **extra}`, and results.md: `table` as a markdown
    table of `columns` followed by `footer` (shared files: process 0)."""
    workdir = epath.Path(workdir)
    files.write_json(workdir / "results.json", {"aggregate": list(table), "seeds": list(seed_rows), **extra}, indent=2)
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r) for _, cell in columns) + " |" for r in table]
    files.write_text(workdir / "results.md", "\n".join(lines + ["", footer]) + "\n")


def spread(n_seeds: int, unit: str) -> str:
    """What a table's ± means: the s.e. across training seeds (the references' over `unit`, e.g. "games"), or
    with one seed the s.e. over `unit`."""
    return (f"trained methods: mean ± s.e. across {n_seeds} seeds; references: ± s.e. over {unit}" if n_seeds > 1
            else f"one seed: ± is the s.e. over {unit}")
