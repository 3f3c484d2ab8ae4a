"""Results across seeds: per-seed rows in, one row per group out with the mean over seeds ± the standard error
across seeds (what a claim rests on), beside the mean of the per-seed (per-episode) standard errors."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["aggregate", "across_seeds", "mean_se", "over_seeds", "per_seed", "seed_workdir", "training_seeds"]


def across_seeds(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) over seeds: std with ddof 1 over √n; 0 for a single seed."""
    values = np.asarray(values, np.float64)
    if values.size == 0:
        raise ValueError("no seed rows to aggregate")
    se = float(values.std(ddof=1) / np.sqrt(values.size)) if values.size > 1 else 0.0
    return float(values.mean()), se


def aggregate(rows: Sequence[dict], by: Sequence[str], metrics: Sequence[str],
              episode_stderr: dict[str, str] | None = None) -> list[dict]:
    """One row per distinct value of the `by` keys, in first-seen order.

    Each metric m gets `m` (the mean over the group's seed rows), `m_se_seeds`
    (the standard error across seeds) and `m_seeds` (the per-seed values, in row
    order); `episode_stderr` maps a metric to the per-seed row key of its
    per-episode standard error, averaged into `m_se_episodes`. `n_seeds` counts
    the rows, and `seeds` lists their `seed` values.
    """
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for key, group in groups.items():
        agg = dict(zip(by, key), n_seeds=len(group), seeds=[r.get("seed") for r in group])
        for m in metrics:
            values = [r[m] for r in group]
            agg[m], agg[f"{m}_se_seeds"] = across_seeds(values)
            agg[f"{m}_seeds"] = values
            if episode_stderr and m in episode_stderr:
                agg[f"{m}_se_episodes"] = float(np.mean([r[episode_stderr[m]] for r in group]))
        out.append(agg)
    return out


def training_seeds(first: int, n: int) -> list[int]:
    """The training seeds of a run with `seeds=n` starting at `seed=first`: first, first + 1, ..."""
    if n < 1:
        raise ValueError(f"seeds must be >= 1, got {n}")
    return list(range(first, first + n))


def seed_workdir(workdir, seed: int, n_seeds: int):
    """Where one seed's runs go: the workdir itself for a single seed (as before seeds existed), else `seed<k>/`."""
    return workdir if n_seeds == 1 else workdir / f"seed{seed}"


def over_seeds(first: int, n: int, workdir, seed_rows: Callable[[int, object], list[dict]]) -> list[dict]:
    """The per-seed loop: every training seed's rows in order, `seed_rows(seed, its workdir)` (`seed_workdir`)."""
    return [row for seed in training_seeds(first, n) for row in seed_rows(seed, seed_workdir(workdir, seed, n))]


def mean_se(row: dict, metric: str, fmt: str = ".3f") -> str:
    """"mean ± s.e." of an aggregated metric: the s.e. across seeds with several seeds, else the per-episode
    one (when the rows carry it), else the mean alone."""
    se = row.get(f"{metric}_se_seeds") if row.get("n_seeds", 1) > 1 else row.get(f"{metric}_se_episodes")
    return f"{row[metric]:{fmt}}" + ("" if se is None else f" ± {se:{fmt}}")


def per_seed(row: dict, metric: str, fmt: str = ".3f") -> str:
    """The per-seed values of an aggregated metric, "a / b / c" ("" for a single seed)."""
    values = row.get(f"{metric}_seeds", [])
    return " / ".join(f"{v:{fmt}}" for v in values) if len(values) > 1 else ""
