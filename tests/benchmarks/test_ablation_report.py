"""The ablation report's arithmetic (benchmarks/ablation_fashion_mnist.py): paired differences per seed,
"better" counted in each metric's own direction, mean ± std, and report paths."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks import ablation_fashion_mnist as abl  # noqa: E402


def _results(shift: dict) -> dict:
    """LA only at fixed values; every other variant = LA + shift[metric] * (seed + 1)."""
    base = {"top1": 0.80, "many": 0.85, "medium": 0.70, "few": 0.60, "ece": 0.05, "mistake_severity": 2.0}
    out = {"la": {s: dict(base) for s in (0, 1)}}
    for key, *_ in abl.VARIANTS[1:]:
        out[key] = {s: {m: v + shift.get(m, 0.0) * (s + 1) for m, v in base.items()} for s in (0, 1)}
    return out


def test_paired_lines_count_better_in_each_metrics_direction():
    # top-1 up (better), ECE up (worse: lower is better), severity down (better)
    lines = abl.paired_lines(_results({"top1": 0.01, "ece": 0.01, "mistake_severity": -0.1}), [0, 1])
    assert len(lines) == 2 + len(abl.VARIANTS) - 1
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    cols = {m: cells[i + 1] for i, (m, *_) in enumerate(abl.METRICS)}
    assert cols["top1"] == "+1.50 (2/2 better)"           # (1 + 2) / 2 points
    assert cols["ece"] == "+1.50 (0/2 better)"
    assert cols["mistake_severity"] == "-0.150 (2/2 better)"
    assert cols["few"] == "+0.00 (0/2 better)"            # no change is not better


def test_fmt_is_mean_and_sample_std_in_the_metrics_scale():
    assert abl.fmt([0.5, 0.7], 100, "{:.2f}") == "60.00 ± 14.14"
    assert abl.fmt([2.0], 1, "{:.3f}") == "2.000 ± 0.000"


def test_report_paths_are_shown_relative_to_the_repository(tmp_path):
    assert abl.shown(REPO / "benchmarks" / "x.json") == "benchmarks/x.json"
    assert abl.shown(tmp_path / "x.json") == str((tmp_path / "x.json").resolve())
