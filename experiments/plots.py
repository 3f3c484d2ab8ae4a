"""The experiments' result plots, written headless into the workdir (shared files: process 0 only)."""

from __future__ import annotations

import io

from etils import epath

from ilql_jax import files


def save_figure(path: str | epath.PathLike, fig) -> None:
    """`fig` as a PNG at `path` (local or `gs://`), from process 0; closes the figure."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    files.write_bytes(path, buffer.getvalue())


def bar_plot_returns(path: str | epath.PathLike, table: list[dict], title: str) -> None:
    """One bar per method: the mean return over seeds ± 2 s.e. across seeds (± 2 per-episode s.e. for a single
    seed), with each seed's return as a dot: the spread the claims rest on."""
    if not files.is_writer():
        return
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = range(len(table))
    se = [r["mean_return_se_seeds"] if r["n_seeds"] > 1 else r.get("mean_return_se_episodes", 0.0) for r in table]
    ax.bar(x, [r["mean_return"] for r in table], yerr=[2 * s for s in se], capsize=3, alpha=0.7)
    for i, r in zip(x, table):
        values = r["mean_return_seeds"]
        if len(values) > 1:
            ax.scatter([i] * len(values), values, color="black", s=8, zorder=3)
    ax.set_xticks(list(x), [r["method"] for r in table], rotation=30, ha="right")
    ax.set_ylabel("mean return (±2 s.e.; dots: seeds)")
    ax.set_title(title)
    fig.tight_layout()
    save_figure(path, fig)
