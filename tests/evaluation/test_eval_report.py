"""The rich summary table shows every metric of the summary."""
from __future__ import annotations

import torch
from rich.console import Console

from hgltr_cli.evaluation import metrics as M
from hgltr_cli.evaluation import report

INF = float("inf")


def test_summary_table_renders_every_metric():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.25, 0.65], [0.44, 0.36, 0.2], [0.05, 0.1, 0.85]])
    targets = torch.tensor([0, 1, 2, 2])
    H = torch.tensor([[0.0, 1.0, 3.0], [1.0, 0.0, INF], [3.0, INF, 0.0]])
    s = M.summarize(probs, targets, [150, 50, 5], H=H, class_names=["cat", "dog", "eel"], from_logits=False)
    console = Console(record=True, width=120)
    report.print_summary(s, console=console)
    text = console.export_text()
    for label in ("Top-1", "Top-5", "Many-shot", "Medium-shot", "Few-shot", "Macro-F1", "Worst-class",
                  "Harmonic mean", "ECE", "Mistake severity", "hierarchical distance @1", "hierarchical distance @5"):
        assert label in text, label
    # top-1 = 2/4 -> 50.00 %; class 1 has accuracy 0 -> harmonic mean 0.00; severity (4 + 3) / 2
    assert "50.00" in text and "3.500" in text and "inf capped at 4" in text
    rows = dict((m, v) for m, v, _ in report.summary_rows(s))
    assert rows["Harmonic mean of class acc. (%)"] == "0.00"
    assert rows["Medium-shot (%)"] == "0.00" and rows["Many-shot (%)"] == "100.00"


def test_missing_values_render_as_dash():
    s = M.summarize(torch.eye(2), torch.tensor([0, 1]), [500, 600], from_logits=False)
    rows = dict((m, v) for m, v, _ in report.summary_rows(s))
    assert rows["Few-shot (%)"] == report.MISSING and rows["Top-1 accuracy (%)"] == "100.00"
    assert "Mistake severity" not in rows
