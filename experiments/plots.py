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


def bar_plot_returns(path: str | epath.PathLike, rows: list[dict], title: str) -> None:
    """One bar per method: `mean_return` ± 2·`stderr` (the comparison the issues ask for)."""
    if not files.is_writer():
        return
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
    save_figure(path, fig)
