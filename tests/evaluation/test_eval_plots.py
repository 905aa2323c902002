"""Plots are written as valid, non-empty PNGs of the requested size."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from hgltr_cli.evaluation import metrics as M
from hgltr_cli.evaluation import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, size):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.size == size
        # not a blank canvas: more than a handful of distinct colours
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 20)) > 10


@pytest.fixture(scope="module")
def evaluated():
    g = torch.Generator().manual_seed(0)
    K, N = 12, 240
    counts = [500, 300, 150, 101, 100, 60, 20, 19, 10, 5, 1, 0]
    targets = torch.arange(N) % K
    logits = torch.randn(N, K, generator=g)
    logits[torch.arange(N), targets] += torch.linspace(3, -1, K)[targets]
    acc = M.Accumulator(counts, class_names=[f"c{i}" for i in range(K)]).update(logits, targets)
    return acc, counts


def test_accuracy_vs_train_count(tmp_path, evaluated):
    acc, counts = evaluated
    out = plots.plot_accuracy_vs_train_count(
        counts, acc.class_accuracy().tolist(), acc.groups, tmp_path / "a" / "acc_vs_count.png",
        many_above=100, few_below=20, figsize=(7, 4.5), dpi=80,
    )
    assert out == tmp_path / "a" / "acc_vs_count.png"
    _check_png(out, (560, 360))


def test_reliability_diagram(tmp_path, evaluated):
    acc, _ = evaluated
    s = acc.summary()
    out = plots.plot_reliability_diagram(s["reliability"], tmp_path / "rel.png", ece=s["ece"], figsize=(5, 5), dpi=100)
    _check_png(out, (500, 500))
    # without an explicit ECE the diagram computes it from the bins
    _check_png(plots.plot_reliability_diagram(s["reliability"], tmp_path / "rel2.png", dpi=50, figsize=(6, 6)), (300, 300))


def test_superclass_accuracy_plot(tmp_path, evaluated):
    acc, _ = evaluated
    supers = ["animal"] * 5 + ["plant"] * 4 + ["artifact"] * 3
    values = [None if v != v else v for v in acc.class_accuracy().tolist()]
    out = plots.plot_superclass_accuracy(supers, values, tmp_path / "super.png", figsize=(6, 3), dpi=100)
    _check_png(out, (600, 300))
    # default height grows with the number of superclasses
    many = [f"s{i % 30}" for i in range(60)]
    out = plots.plot_superclass_accuracy(many, [0.5] * 60, tmp_path / "super30.png", dpi=50)
    with Image.open(out) as im:
        assert im.size[1] > 300 // 2 * 1.5


def test_plots_do_not_touch_pyplot_state(tmp_path, evaluated):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    acc, counts = evaluated
    plots.plot_accuracy_vs_train_count(counts, acc.class_accuracy().tolist(), acc.groups, tmp_path / "x.png")
    assert plt.get_fignums() == before
