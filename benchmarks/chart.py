"""The suite's picture, drawn with matplotlib (``pip install 'mqttd[bench]'``).

``side_by_side(path, title, rows)`` draws one panel per scenario with Mosquitto's median and
mqttd's side by side (and Aedes's when it ran), each panel on its own scale and unit (messages/s, microseconds, MiB), the
ratio and the budget's verdict in its title. (The soak's RSS over time is drawn by
``benchmarks/soak.py``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Row:
    title: str  # "fan-in QoS 0 (8 -> 1)"
    unit: str  # "msg/s"
    a: float | None  # Mosquitto's median (or the single node's, for the Redis rows)
    b: float | None  # mqttd's median
    a_name: str = "Mosquitto"
    verdict: str = ""  # "pass", "MISSED", ""
    c: float | None = None  # Aedes's median, when it ran


def side_by_side(path: str, title: str, rows: list[Row]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    cols = min(3, len(rows)) or 1
    lines = math.ceil(len(rows) / cols) or 1
    fig, axes = plt.subplots(lines, cols, figsize=(4.2 * cols, 3.2 * lines), squeeze=False)
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    for ax, row in zip(axes.flat, rows, strict=False):
        names = [row.a_name, "mqttd"]
        values = [row.a or 0.0, row.b or 0.0]
        shown: list[float | None] = [row.a, row.b]
        colours = ["#9e9e9e", "#2e7d32" if row.verdict != "MISSED" else "#c62828"]
        if row.c is not None:
            names.append("Aedes")
            values.append(row.c)
            shown.append(row.c)
            colours.append("#bdbdbd")
        bars = ax.bar(names, values, color=colours, width=0.6)
        for bar, v in zip(bars, shown, strict=True):
            label = "n/a" if v is None else f"{v:,.0f}"
            ax.annotate(
                label,
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
        ratio = f"{row.b / row.a:.2f}x" if row.a and row.b else "n/a"
        ax.set_title(f"{row.title}\n{ratio} {row.verdict}".rstrip(), fontsize=9)
        ax.set_ylabel(row.unit, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.margins(y=0.15)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["Row", "side_by_side"]
