"""Every metric against a computation done by hand on a fixed 6-sample, 3-class example."""
from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from hgltr_cli.evaluation import metrics as M

INF = float("inf")

# Six samples, three classes; probabilities chosen away from the 1/15 bin edges.
#            p0    p1    p2     target  top-1  conf  top-2
PROBS = torch.tensor([
    [0.70, 0.20, 0.10],  # 0  ->  0  ok   0.70  {0,1}
    [0.25, 0.62, 0.13],  # 1  ->  1  ok   0.62  {1,0}
    [0.10, 0.25, 0.65],  # 1  ->  2  bad  0.65  {2,1}
    [0.44, 0.36, 0.20],  # 2  ->  0  bad  0.44  {0,1}
    [0.05, 0.10, 0.85],  # 2  ->  2  ok   0.85  {2,1}
    [0.15, 0.45, 0.40],  # 2  ->  1  bad  0.45  {1,2}
])
TARGETS = torch.tensor([0, 1, 1, 2, 2, 2])
PREDS = torch.tensor([0, 1, 2, 0, 2, 1])
TRAIN_COUNTS = [150, 50, 5]  # many, medium, few
NAMES = ["cat", "dog", "eel"]
# LCA distances; +inf where two classes meet only at the root. Max finite = 3 -> cap 4.
H = torch.tensor([
    [0.0, 1.0, 3.0],
    [1.0, 0.0, INF],
    [3.0, INF, 0.0],
])


def approx(x):
    return pytest.approx(x, abs=1e-9)


def test_class_groups_thresholds():
    counts = [101, 100, 20, 19, 0]
    assert M.class_groups(counts) == ["many", "medium", "medium", "few", "few"]
    # The authors' code counts N_k <= 20 as few-shot.
    assert M.class_groups(counts, few_inclusive=True) == ["many", "medium", "few", "few", "few"]
    assert M.class_groups(torch.tensor([11, 10, 3]), many_above=10, few_below=4) == ["many", "medium", "few"]


def test_topk_accuracy_by_hand():
    assert M.predictions(PROBS).tolist() == PREDS.tolist()
    assert M.top1_accuracy(PROBS, TARGETS) == approx(3 / 6)
    # top-2 misses only sample 3 (target 2, top-2 {0, 1})
    assert M.topk_accuracy(PROBS, TARGETS, 2) == approx(5 / 6)
    # k > K is clamped to K: every target is in the top-3 of 3 classes
    assert M.topk_accuracy(PROBS, TARGETS, 5) == approx(1.0)


def test_per_class_and_group_accuracy_by_hand():
    acc = M.per_class_accuracy(PREDS, TARGETS, 3)
    # class 0: 1/1, class 1: 1/2 (sample 1 right, 2 wrong), class 2: 1/3 (only sample 4)
    assert acc.tolist() == approx([1.0, 0.5, 1 / 3])
    groups = M.class_groups(TRAIN_COUNTS)
    assert M.group_accuracy(acc, groups) == {"many": approx(1.0), "medium": approx(0.5), "few": approx(1 / 3)}
    assert M.mean_class_accuracy(acc) == approx((1 + 0.5 + 1 / 3) / 3)
    assert M.worst_class_accuracy(acc) == approx(1 / 3)
    # harmonic mean: 3 / (1/1 + 1/0.5 + 1/(1/3)) = 3 / 6
    assert M.harmonic_mean_accuracy(acc) == approx(0.5)


def test_class_without_eval_samples_is_left_out():
    acc = M.per_class_accuracy(torch.tensor([0, 1]), torch.tensor([0, 0]), 3)
    assert acc[0].item() == 0.5 and math.isnan(acc[1].item()) and math.isnan(acc[2].item())
    assert M.worst_class_accuracy(acc) == approx(0.5)
    assert M.group_accuracy(acc, ["many", "medium", "few"]) == {"many": 0.5, "medium": None, "few": None}


def test_harmonic_mean_is_zero_with_a_zero_accuracy_class():
    assert M.harmonic_mean_accuracy(torch.tensor([1.0, 0.0, 0.5], dtype=torch.float64)) == 0.0


def test_macro_f1_by_hand():
    # class 0: TP 1 (s0), FP 1 (s3), FN 0      -> 2/(2+1+0) = 2/3
    # class 1: TP 1 (s1), FP 1 (s5), FN 1 (s2) -> 2/(2+1+1) = 1/2
    # class 2: TP 1 (s4), FP 1 (s2), FN 2      -> 2/(2+1+2) = 2/5
    assert M.macro_f1(PREDS, TARGETS, 3) == approx((2 / 3 + 1 / 2 + 2 / 5) / 3)
    # A class in neither targets nor predictions is not averaged (scikit-learn convention).
    assert M.macro_f1(PREDS, TARGETS, 5) == approx((2 / 3 + 1 / 2 + 2 / 5) / 3)


def test_ece_bins_by_hand():
    # 15 bins of width 1/15, right-closed ((m-1)/15, m/15]:
    #   bin 6 (0.400, 0.467]: s3 0.44 wrong, s5 0.45 wrong -> acc 0,   conf 0.445
    #   bin 9 (0.600, 0.667]: s1 0.62 ok,    s2 0.65 wrong -> acc 0.5, conf 0.635
    #   bin 10 (0.667, 0.733]: s0 0.70 ok                  -> acc 1,   conf 0.70
    #   bin 12 (0.800, 0.867]: s4 0.85 ok                  -> acc 1,   conf 0.85
    ece = (2 / 6) * 0.445 + (2 / 6) * abs(0.5 - 0.635) + (1 / 6) * 0.30 + (1 / 6) * 0.15
    assert M.expected_calibration_error(PROBS, TARGETS) == pytest.approx(ece, abs=1e-6)
    conf, pred = PROBS.max(dim=1)
    bins = M.calibration_bins(conf, pred == TARGETS)
    expected_counts = [0] * 15
    expected_counts[6] = expected_counts[9] = 2
    expected_counts[10] = expected_counts[12] = 1
    assert bins.count.tolist() == expected_counts
    assert bins.accuracy()[9].item() == approx(0.5)
    assert bins.mean_confidence()[6].item() == pytest.approx(0.445, abs=1e-6)


def test_ece_edges_are_right_closed():
    # confidence 1.0 is in the last bin; 0.0 in the first; a perfect, confident model has ECE 0.
    bins = M.calibration_bins(torch.tensor([1.0, 0.0]), torch.tensor([True, False]), n_bins=15)
    assert bins.count[14].item() == 1 and bins.count[0].item() == 1
    assert bins.ece() == approx(0.0)
    # 2 bins: 0.5 belongs to (0, 0.5]; ECE = 1/2*|0-0.5| + 1/2*|1-0.9|
    bins = M.calibration_bins(torch.tensor([0.5, 0.9], dtype=torch.float64), torch.tensor([False, True]), n_bins=2)
    assert bins.count.tolist() == [1, 1]
    assert bins.ece() == pytest.approx(0.5 * 0.5 + 0.5 * 0.1, abs=1e-9)


def test_mistake_severity_and_ahd_by_hand():
    Hc = M.capped_distances(H)
    assert Hc[1, 2].item() == 4.0 and Hc[0, 2].item() == 3.0  # inf -> max finite (3) + 1
    # wrong: s2 H[1,2]=inf->4, s3 H[2,0]=3, s5 H[2,1]=inf->4
    assert M.mistake_severity(PREDS, TARGETS, H) == approx((4 + 3 + 4) / 3)
    # AHD@1 averages over all six samples; the three correct ones contribute 0.
    assert M.average_hierarchical_distance(PROBS, TARGETS, H, 1) == approx((0 + 0 + 4 + 3 + 0 + 4) / 6)
    # AHD@2, per sample mean of H[y, top-2]:
    # s0 {0,1}: (0+1)/2; s1 {1,0}: (0+1)/2; s2 {2,1}: (4+0)/2; s3 {0,1}: (3+4)/2;
    # s4 {2,1}: (0+4)/2; s5 {1,2}: (4+0)/2
    assert M.average_hierarchical_distance(PROBS, TARGETS, H, 2) == approx((0.5 + 0.5 + 2 + 3.5 + 2 + 2) / 6)
    # AHD@5 clamps to k=3: row means 4/3 (y=0), 5/3 (y=1), 7/3 (y=2)
    assert M.average_hierarchical_distance(PROBS, TARGETS, H, 5) == approx((4 / 3 + 2 * 5 / 3 + 3 * 7 / 3) / 6)


def test_mistake_severity_without_mistakes_is_nan():
    assert math.isnan(M.mistake_severity(TARGETS, TARGETS, H))


def test_flat_hierarchy_caps_at_one():
    Hflat = torch.full((3, 3), INF)
    Hflat.fill_diagonal_(0)
    assert M.mistake_severity(PREDS, TARGETS, Hflat) == approx(1.0)


def test_most_confused_by_hand():
    # mistakes (true, pred): (1,2), (2,0), (2,1); class 2 ties 0 and 1 -> smallest index
    best, n = M.most_confused(PREDS, TARGETS, 3)
    assert best == [None, 2, 0] and n == [0, 1, 1]
    # a clear winner beats an earlier index
    best, n = M.most_confused(torch.tensor([0, 1, 1, 2]), torch.tensor([2, 2, 2, 0]), 3)
    assert best == [2, None, 1] and n == [1, 0, 2]


def test_superclass_accuracy():
    out = M.superclass_accuracy(torch.tensor([1.0, 0.5, float("nan"), 0.0]), ["animal", "plant", "plant", "animal"])
    assert out == {"animal": (0.5, 2), "plant": (0.5, 1)}


def _summary(**kw):
    return M.summarize(PROBS, TARGETS, TRAIN_COUNTS, H=H, class_names=NAMES, from_logits=False, topk=(1, 2, 5), ahd_k=(1, 2), **kw)


def test_summary_by_hand_and_json_able():
    s = _summary()
    json.dumps(s, allow_nan=False)
    assert s["num_samples"] == 6 and s["num_classes"] == 3
    assert s["top1"] == approx(0.5) and s["top2"] == approx(5 / 6) and s["top5"] == approx(1.0)
    assert (s["many"], s["medium"], s["few"]) == (approx(1.0), approx(0.5), approx(1 / 3))
    assert s["group_sizes"] == {"many": 1, "medium": 1, "few": 1}
    assert s["macro_f1"] == approx((2 / 3 + 1 / 2 + 2 / 5) / 3)
    assert s["worst_class_accuracy"] == approx(1 / 3) and s["worst_class"] == "eel"
    assert s["harmonic_mean_accuracy"] == approx(0.5)
    assert s["ece"] == pytest.approx((2 * 0.445 + 2 * 0.135 + 0.30 + 0.15) / 6, abs=1e-6)
    assert s["mistake_severity"] == approx(11 / 3)
    assert s["ahd@1"] == approx(11 / 6) and s["ahd@2"] == approx(10.5 / 6)
    assert s["distance_cap"] == 4.0
    assert s["reliability"]["count"][6] == 2 and s["reliability"]["accuracy"][0] is None


def test_logits_give_the_same_summary_as_probabilities():
    from_probs = _summary()
    from_logits = M.summarize(PROBS.log() + 3.0, TARGETS, TRAIN_COUNTS, H=H, class_names=NAMES, topk=(1, 2, 5), ahd_k=(1, 2))
    assert from_logits["ece"] == pytest.approx(from_probs["ece"], abs=1e-6)
    for key in ("top1", "top2", "macro_f1", "mistake_severity", "ahd@2", "harmonic_mean_accuracy"):
        assert from_logits[key] == approx(from_probs[key])


def test_streaming_batches_and_merge_equal_one_batch():
    whole = _summary()
    acc = M.Accumulator(TRAIN_COUNTS, H=H, class_names=NAMES, from_logits=False, topk=(1, 2, 5), ahd_k=(1, 2))
    for lo, hi in [(0, 1), (1, 3), (3, 6)]:
        acc.update(PROBS[lo:hi], TARGETS[lo:hi])
    a = M.Accumulator(TRAIN_COUNTS, H=H, class_names=NAMES, from_logits=False, topk=(1, 2, 5), ahd_k=(1, 2))
    b = M.Accumulator(TRAIN_COUNTS, H=H, class_names=NAMES, from_logits=False, topk=(1, 2, 5), ahd_k=(1, 2))
    merged = a.update(PROBS[:4], TARGETS[:4]).merge(b.update(PROBS[4:], TARGETS[4:]))
    for other in (acc, merged):
        s = other.summary()
        assert s.keys() == whole.keys()
        for key, value in whole.items():
            if isinstance(value, float):
                assert s[key] == pytest.approx(value, abs=1e-9), key
        assert s["reliability"]["count"] == whole["reliability"]["count"]
        assert other.per_class_rows() == acc.per_class_rows()


def test_summary_without_hierarchy_has_no_hierarchy_keys():
    s = M.summarize(PROBS, TARGETS, TRAIN_COUNTS, from_logits=False)
    assert "mistake_severity" not in s and "ahd@1" not in s and "top5" in s


def test_shape_errors():
    with pytest.raises(ValueError):
        M.Accumulator(TRAIN_COUNTS).update(PROBS[:, :2], TARGETS)
    with pytest.raises(ValueError):
        M.topk_accuracy(PROBS, torch.tensor([0, 1, 2, 3, 0, 0]))


def test_per_class_csv(tmp_path):
    acc = M.Accumulator(TRAIN_COUNTS + [0], class_names=NAMES + ["fox"], from_logits=False)
    acc.update(torch.cat([PROBS, torch.zeros(6, 1)], dim=1), TARGETS)
    path = M.write_per_class_csv(acc.per_class_rows(), tmp_path / "eval" / "per_class.csv")
    rows = list(csv.DictReader(path.open()))
    assert [r["name"] for r in rows] == ["cat", "dog", "eel", "fox"]
    assert [r["group"] for r in rows] == ["many", "medium", "few", "few"]
    assert [r["train_count"] for r in rows] == ["150", "50", "5", "0"]
    assert float(rows[1]["accuracy"]) == approx(0.5)
    assert [r["most_confused"] for r in rows] == ["", "eel", "cat", ""]
    assert rows[3]["accuracy"] == "" and rows[3]["eval_count"] == "0"
