"""Results across seeds: per-seed rows in, one row per group out with the mean over seeds ± the standard error
across seeds (what a claim rests on), beside the mean of the per-seed (per-episode) standard errors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["aggregate", "across_seeds"]


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
