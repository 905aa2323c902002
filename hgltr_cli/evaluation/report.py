"""Rich table of an evaluation summary (the dict from ``metrics.summarize``)."""
from __future__ import annotations

import math
from typing import Any, Optional

from rich.markup import escape
from rich.table import Table

MISSING = "—"


def _pct(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return f"{100.0 * float(x):.2f}"


def _num(x: Any) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    return f"{float(x):.3f}"


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, value, note) rows in display order; keys absent from the summary are skipped."""
    rows: list[tuple[str, str, str]] = []
    topks = sorted((int(k[3:]) for k in summary if k.startswith("top") and k[3:].isdigit()))
    for k in topks:
        note = f"{summary.get('num_samples', '?')} samples" if k == 1 else ""
        rows.append((f"Top-{k} accuracy (%)", _pct(summary[f"top{k}"]), note))
    sizes = summary.get("group_sizes", {})
    rule = summary.get("group_rule", {})
    notes = {
        "many": f"N_k > {rule.get('many_above', 100)}",
        "medium": "",
        "few": f"N_k {'<=' if rule.get('few_inclusive') else '<'} {rule.get('few_below', 20)}",
    }
    for g in ("many", "medium", "few"):
        if g in summary:
            note = f"{sizes.get(g, '?')} classes" + (f", {notes[g]}" if notes[g] else "")
            rows.append((f"{g.capitalize()}-shot (%)", _pct(summary[g]), note))
    if "mean_class_accuracy" in summary:
        rows.append(("Mean class accuracy (%)", _pct(summary["mean_class_accuracy"]), ""))
    if "macro_f1" in summary:
        rows.append(("Macro-F1 (%)", _pct(summary["macro_f1"]), ""))
    if "worst_class_accuracy" in summary:
        rows.append(("Worst-class accuracy (%)", _pct(summary["worst_class_accuracy"]), summary.get("worst_class") or ""))
    if "harmonic_mean_accuracy" in summary:
        rows.append(("Harmonic mean of class acc. (%)", _pct(summary["harmonic_mean_accuracy"]), "0 if any class is 0"))
    if "ece" in summary:
        n_bins = len(summary.get("reliability", {}).get("count", [])) or 15
        rows.append(("ECE (%)", _pct(summary["ece"]), f"{n_bins} bins, lower is better"))
    cap = summary.get("distance_cap")
    cap_note = f"inf capped at {cap:g}" if isinstance(cap, (int, float)) else ""
    if "mistake_severity" in summary:
        rows.append(("Mistake severity", _num(summary["mistake_severity"]), cap_note))
    for k in sorted(int(k[4:]) for k in summary if k.startswith("ahd@")):
        rows.append((f"Avg. hierarchical distance @{k}", _num(summary[f"ahd@{k}"]), "lower is better"))
    return rows


def summary_table(summary: dict[str, Any], title: Optional[str] = "Evaluation") -> Table:
    """A two-column (plus note) rich table; accuracies in %, distances as plain numbers."""
    table = Table(title=escape(title) if title else title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("note", style="dim")
    for metric, value, note in summary_rows(summary):
        table.add_row(escape(metric), escape(value), escape(note))  # class names are data, not markup
    return table


def print_summary(summary: dict[str, Any], console=None, title: Optional[str] = "Evaluation") -> None:
    if console is None:
        from hgltr_cli.console import out as console
    console.print(summary_table(summary, title=title))
