"""The experiments' result plots, written headless into the workdir."""

from __future__ import annotations


def bar_plot_returns(path: str, rows: list[dict], title: str) -> None:
    """One bar per method: `mean_return` ± 2·`stderr` (the comparison the issues ask for)."""
    import matplotlib
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar([r["method"] for r in rows], [r["mean_return"] for r in rows],
           yerr=[2 * r["stderr"] for r in rows], capsize=3)
    ax.set_ylabel("mean return (±2 s.e.)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
