"""The LCA-distance heatmap (the paper's Fig. 3a), classes ordered by the tree."""
from __future__ import annotations

from pathlib import Path


def plot_heatmap(hierarchy, path: str | Path, kind: str = "pair-depth", max_labels: int = 60) -> Path:
    """Write a PNG of H with classes in depth-first tree order; +inf pairs in light grey.

    Tick labels are drawn up to `max_labels` classes; top-level group boundaries are marked
    with thin lines so blocks of related classes are visible at any size.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    order = hierarchy.tree_order()
    h = hierarchy.distance_matrix(kind).numpy()[np.ix_(order, order)]
    k = len(order)
    masked = np.ma.masked_invalid(np.where(np.isinf(h), np.nan, h))
    cmap = matplotlib.colormaps["viridis_r"].with_extremes(bad="#dddddd")
    size = 6 if k > max_labels else max(5, min(14, 0.18 * k + 3))
    fig, ax = plt.subplots(figsize=(size + 1.5, size), dpi=150)
    im = ax.imshow(masked, cmap=cmap, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=f"LCA distance ({kind}); grey = +inf")
    if k <= max_labels:
        labels = [hierarchy.names[i] for i in order]
        ax.set_xticks(range(k), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(k), labels, fontsize=6)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    tops = [hierarchy.top_level(i) for i in order]
    for j in range(1, k):
        if tops[j] != tops[j - 1]:
            ax.axhline(j - 0.5, color="white", linewidth=0.3)
            ax.axvline(j - 0.5, color="white", linewidth=0.3)
    ax.set_title(f"{hierarchy.source} hierarchy: {k} classes")
    fig.tight_layout()
    out = Path(path)
    if not out.suffix:  # the path reported back is the file written (matplotlib would add .png itself)
        out = out.with_suffix(".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    plt.close(fig)
    return out
