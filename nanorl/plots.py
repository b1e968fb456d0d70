"""Plots every script writes next to its metrics: one PNG per call, drawn off-screen (Agg).

matplotlib is imported on first use (in `figure`, where every figure is made), so importing nanorl stays quick.
"""

import contextlib
import statistics

from nanorl import runtime


@contextlib.contextmanager
def figure(path: str, nrows: int = 1, ncols: int = 1, figsize=(7, 4.2), tight: bool = True, **subplots):
    """(fig, axes) of a new figure, saved to `path` at 110 dpi and closed when the block ends."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(nrows, ncols, figsize=figsize, **subplots)
    yield fig, axes
    if tight:
        fig.tight_layout()
    runtime.write_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def lines(path: str, series: dict[str, tuple[list, list]], title: str, xlabel: str, ylabel: str,
          logy: bool = False):
    with figure(path) as (_, ax):
        for name, (xs, ys) in series.items():
            ax.plot(xs, ys, label=name, marker="o" if len(xs) < 30 else None, markersize=3)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend()


def bands(path: str, series: dict[str, tuple[list, list, list, list]], title: str, xlabel: str, ylabel: str,
          ylim: tuple | None = None, dashed: tuple[str, ...] = ()):
    """A line and band per named (x, y, low, high) series; one in `dashed` is dashed, in its predecessor's colour."""
    with figure(path) as (_, ax):
        line = None
        for name, (xs, ys, lows, highs) in series.items():
            companion = dict(color=line.get_color(), linestyle="--") if name in dashed and line is not None else {}
            line, = ax.plot(xs, ys, label=name, **companion)
            ax.fill_between(xs, lows, highs, color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=ylim)
        ax.grid(alpha=0.3)
        ax.legend()


def bars(path: str, groups: dict[str, dict[str, float]], title: str, ylabel: str,
         errors: dict[str, dict[str, float]] | None = None):
    """Grouped bars: groups = {group label: {bar label: value}}, optional error bars in the same shape."""
    labels = sorted({k for g in groups.values() for k in g})
    with figure(path) as (_, ax):
        width = 0.8 / max(len(groups), 1)
        for i, (name, values) in enumerate(groups.items()):
            xs = [j + i * width for j in range(len(labels))]
            yerr = [errors[name].get(k, 0.0) for k in labels] if errors else None
            ax.bar(xs, [values.get(k, 0.0) for k in labels], width, label=name, yerr=yerr, capsize=3)
        long_labels = max(map(len, labels), default=0) > 14
        ax.set_xticks([j + width * (len(groups) - 1) / 2 for j in range(len(labels))], labels,
                      rotation=20 if long_labels else 0, ha="right" if long_labels else "center", fontsize=8)
        ax.set(title=title, ylabel=ylabel)
        ax.grid(alpha=0.3, axis="y")
        ax.legend()


def stacked(path: str, xs: list, shares: dict[str, list], title: str, xlabel: str, ylabel: str):
    with figure(path) as (_, ax):
        ax.stackplot(xs, *shares.values(), labels=list(shares), alpha=0.85)
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, 1),
               xlim=(min(xs), max(xs)) if len(xs) > 1 else None)
        ax.legend(loc="upper left", fontsize=8)


def smoothed(values: list[float], window: int) -> list[float]:
    """Centred moving mean; the window shrinks at the ends."""
    half = window // 2
    return [statistics.fmean(values[max(0, i - half):i + half + 1]) for i in range(len(values))]


def smoothed_paths(path: str, series: dict[str, tuple[list, list]], window: int, title: str, xlabel: str,
                   ylabel: str):
    """Each (x, y) series' points, and its path with x and y both smoothed (a noisy x, e.g. KL, would zig-zag)."""
    with figure(path) as (_, ax):
        for name, (xs, ys) in series.items():
            line, = ax.plot(smoothed(xs, window), smoothed(ys, window), label=f"{name} ({window}-step mean)")
            ax.scatter(xs, ys, s=8, alpha=0.35, color=line.get_color())
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend()
