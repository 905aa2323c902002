"""Evaluation plots written as PNG with matplotlib's Agg canvas.

matplotlib is imported inside each function (``hgltr --help`` must stay fast) and figures
are drawn on an explicit ``FigureCanvasAgg`` instead of pyplot, so nothing touches the
global backend or pyplot's figure registry (safe in threads and in a notebook session).
Figures are saved without ``bbox_inches="tight"`` so the PNG is exactly figsize * dpi.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

GROUP_COLOURS = {"many": "#1f77b4", "medium": "#ff7f0e", "few": "#d62728"}


def _figure(figsize: tuple[float, float], dpi: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=dpi)
    return path


def _finite(x: Any) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def plot_accuracy_vs_train_count(
    train_counts: Sequence[int],
    class_accuracy: Sequence[Optional[float]],
    groups: Sequence[str],
    path: str | Path,
    *,
    many_above: Optional[int] = None,
    few_below: Optional[int] = None,
    title: str = "Per-class accuracy vs training count",
    figsize: tuple[float, float] = (7.0, 4.5),
    dpi: int = 100,
) -> Path:
    """Scatter of each class's accuracy (%) against its training count on a log x axis.

    Colours show the many/medium/few group; dashed lines mark the group thresholds when
    given. Classes without evaluation samples are skipped; with a zero training count
    the axis is symlog so those classes still show.
    """
    if not (len(train_counts) == len(class_accuracy) == len(groups)):
        raise ValueError("train_counts, class_accuracy and groups need one entry per class")
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    kept = [(int(n), 100.0 * float(a), g) for n, a, g in zip(train_counts, class_accuracy, groups) if _finite(a)]
    for g, colour in GROUP_COLOURS.items():
        pts = [(n, a) for n, a, gg in kept if gg == g]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=14, alpha=0.7, color=colour,
                       label=f"{g} ({len(pts)})", edgecolors="none")
    if any(n <= 0 for n, _, _ in kept):
        ax.set_xscale("symlog", linthresh=1)
    else:
        ax.set_xscale("log")
    for threshold in (many_above, few_below):
        if threshold is not None:
            ax.axvline(threshold, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlabel("training images per class (log)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-3, 103)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if kept:
        ax.legend(loc="lower right", fontsize="small")
    return _save(fig, path, dpi)


def plot_reliability_diagram(
    reliability: dict[str, Any],
    path: str | Path,
    *,
    ece: Optional[float] = None,
    title: str = "Reliability diagram",
    figsize: tuple[float, float] = (5.5, 5.5),
    dpi: int = 100,
) -> Path:
    """Per-bin accuracy bars against the diagonal, the gap to mean confidence in red.

    ``reliability`` is the summary's ``"reliability"`` entry (or
    ``CalibrationBins.to_dict()``): edges, count, accuracy, confidence per bin. The title
    carries the ECE (computed from the bins if not given).
    """
    edges = [float(e) for e in reliability["edges"]]
    counts = list(reliability["count"])
    accs = reliability["accuracy"]
    confs = reliability["confidence"]
    n_bins = len(counts)
    if len(edges) != n_bins + 1:
        raise ValueError("reliability needs n_bins + 1 edges")
    if ece is None:
        total = sum(counts)
        ece = sum(c * abs(a - f) for c, a, f in zip(counts, accs, confs) if c) / total if total else float("nan")
    lefts = edges[:-1]
    widths = [hi - lo for lo, hi in zip(edges[:-1], edges[1:])]
    used = [i for i in range(n_bins) if counts[i] and _finite(accs[i])]

    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.bar([lefts[i] for i in used], [accs[i] for i in used], width=[widths[i] for i in used],
           align="edge", color="#1f77b4", edgecolor="black", linewidth=0.5, label="accuracy")
    # gap: from accuracy to mean confidence of the bin
    ax.bar([lefts[i] for i in used], [confs[i] - accs[i] for i in used], bottom=[accs[i] for i in used],
           width=[widths[i] for i in used], align="edge", color="#d62728", alpha=0.35,
           edgecolor="#d62728", hatch="//", linewidth=0.5, label="gap to confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel(f"confidence (max probability, {n_bins} bins)")
    ax.set_ylabel("accuracy")
    ece_text = "n/a" if not _finite(ece) else f"{100 * ece:.2f}%"
    ax.set_title(f"{title} (ECE = {ece_text})")
    ax.legend(loc="upper left", fontsize="small")
    return _save(fig, path, dpi)


def plot_superclass_accuracy(
    superclasses: Sequence[str],
    class_accuracy: Sequence[Optional[float]],
    path: str | Path,
    *,
    title: str = "Accuracy per top-level superclass",
    sort: bool = True,
    figsize: Optional[tuple[float, float]] = None,
    dpi: int = 100,
) -> Path:
    """Horizontal bars: mean per-class accuracy (%) of each top-level superclass.

    ``superclasses`` gives one name per class (e.g. each class's first node below the
    root). Bars are labelled with the number of evaluated classes; the height grows with
    the number of superclasses unless ``figsize`` is given.
    """
    from hgltr_cli.evaluation.metrics import superclass_accuracy

    stats = superclass_accuracy([float("nan") if a is None else float(a) for a in class_accuracy], superclasses)
    items = [(name, acc, n) for name, (acc, n) in stats.items() if acc is not None]
    if sort:
        items.sort(key=lambda t: (t[1], t[0]))  # lowest at the bottom of barh
    if figsize is None:
        figsize = (7.0, max(2.5, 0.32 * len(items) + 1.2))
    fig = _figure(figsize, dpi)
    ax = fig.add_subplot()
    ys = list(range(len(items)))
    vals = [100.0 * acc for _, acc, _ in items]
    ax.barh(ys, vals, color="#2ca02c", edgecolor="black", linewidth=0.5)
    ax.set_yticks(ys, [name for name, _, _ in items], fontsize="small")
    for y, v, (_, _, n) in zip(ys, vals, items):
        ax.text(min(v, 100) + 1, y, f"{v:.1f}% ({n})", va="center", fontsize="x-small")
    ax.set_xlim(0, 115)
    ax.set_xlabel("mean per-class accuracy (%)  (evaluated classes)")
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path, dpi)
