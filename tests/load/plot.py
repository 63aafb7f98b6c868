"""The server's RSS over a load run as a PNG: the samples, the end of warm-up, and the
least-squares line over the judged window (the numbers the verdict is built on)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

if TYPE_CHECKING:
    from .harness import RssCheck, Sample

MIB = 1024 * 1024


def plot_rss(samples: list[Sample], started: float, rss: RssCheck | None, path: Path) -> None:
    """Write ``samples`` (RSS over time, seconds from ``started``) to ``path``; with the
    verdict's warm-up RSS and fitted slope when ``rss`` is given."""
    seconds = [sample.time - started for sample in samples]
    mib = [sample.rss / MIB for sample in samples]
    figure, axes = plt.subplots(figsize=(9, 4.5), dpi=100)
    try:
        axes.plot(seconds, mib, linewidth=1, label="server RSS")
        if rss is not None:
            axes.axhline(
                rss.warm_mib,
                color="grey",
                linestyle=":",
                linewidth=1,
                label=f"after warm-up: {rss.warm_mib:.0f} MiB",
            )
            axes.axvspan(
                rss.window_start_s,
                rss.window_end_s,
                color="tab:orange",
                alpha=0.12,
                label=f"judged: {rss.slope_mib_per_min:+.1f} MiB/min",
            )
            axes.axhline(
                rss.peak_ratio_limit * rss.warm_mib,
                color="tab:red",
                linestyle="--",
                linewidth=1,
                label=f"peak limit: {rss.peak_ratio_limit:g} x warm-up",
            )
        axes.set_xlabel("seconds from the start of the load")
        axes.set_ylabel("RSS (MiB)")
        axes.grid(alpha=0.3)
        axes.legend(loc="upper left", fontsize=8)
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
