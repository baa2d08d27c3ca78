"""Drawing measurements against sequence length: one implementation's line on a log-log axis,
out-of-memory points marked, plain tick labels."""

from __future__ import annotations


def plot_series(
    ax, lengths: list[int], records_by_length: dict[int, dict], key: str, style, slot=0
):
    """One implementation's line on a log-log axis: measured points joined, the first OOM
    marked with a cross near the top of the axis at its length (``slot`` staggers the crosses
    of implementations that run out of memory at the same length)."""
    xs = [n for n in lengths if records_by_length.get(n, {}).get("status") == "ok"]
    ys = [records_by_length[n][key] for n in xs]
    if xs:
        ax.plot(xs, ys, **style)
    oom = [n for n in lengths if records_by_length.get(n, {}).get("status") == "oom"]
    if oom:
        ax.plot(
            [oom[0]],
            [0.95 - 0.07 * slot],
            marker="X",
            markersize=10,
            linestyle="none",
            color=style["color"],
            transform=ax.get_xaxis_transform(),
            clip_on=False,
        )
    return bool(xs)


def log_axes(ax, any_data: bool) -> None:
    """Log-scaled axes with plain tick labels, lengths on x in base 2, and head-room at the top
    for the out-of-memory crosses (y stays linear on a panel with no data)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(format_length))
    ax.grid(True, which="both", alpha=0.3)
    if not any_data:
        return
    ax.set_yscale("log")
    low, high = ax.get_ylim()
    ax.set_ylim(low, high * (high / low) ** 0.2)
    if high / low < 4:  # too narrow for 1, 2, 3, 5 to give two ticks: evenly spaced ones
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
    elif high / low < 100:  # within a decade or two, ticks at 1, 2, 3, 5 of each decade
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(_plain_number))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _plain_number(y: float, _position=None) -> str:
    return f"{y:.0f}" if y >= 100 else f"{y:.3g}"


def format_length(n: float, _position=None) -> str:
    """Sequence lengths on an axis: 512, 4k, 64k."""
    return f"{n / 1024:g}k" if n >= 1024 else f"{n:g}"
