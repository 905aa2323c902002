"""Evaluation metrics for long-tail, calibration and hierarchy-aware recognition.

Pure functions on torch tensors plus an :class:`Accumulator` that keeps only sufficient
statistics (O(K) counts, 15 calibration bins, and the (true, predicted) pairs of top-1
mistakes), so `hgltr eval` never holds all logits: at K = 8,142 a dense (K, K) int64
confusion matrix would be 530 MB, the mistake pairs of 100k samples are < 1 MB.

Conventions (docs/metrics.md has the formulas):
- Accuracies are fractions in [0, 1]; the rich report shows percentages.
- Overall top-k is per sample; group (many/medium/few), worst-class, harmonic-mean and
  mean-class accuracies are over per-class accuracies (OLTR/LIFT convention).
- A class with no evaluation sample has no accuracy (NaN in tensors, ``None`` in JSON/CSV)
  and is left out of every class average.
- ``k`` larger than K is clamped to K (top-5 on 3 classes is top-3).
- The distance matrix H has +inf where two classes meet only at the root; hierarchy
  metrics replace +inf by (max finite H) + 1 (METHOD.md section 8).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch

from hgltr_cli.data.source import class_groups  # one grouping rule for training and eval

GROUPS = ("many", "medium", "few")
DEFAULT_BINS = 15


# ---------------------------------------------------------------- helpers

def _check(scores: torch.Tensor, targets: torch.Tensor) -> None:
    if scores.ndim != 2:
        raise ValueError(f"scores must be (N, K), got shape {tuple(scores.shape)}")
    if targets.ndim != 1 or targets.shape[0] != scores.shape[0]:
        raise ValueError(
            f"targets must be (N,) with N = {scores.shape[0]}, got shape {tuple(targets.shape)}"
        )
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= scores.shape[1]):
        raise ValueError(f"targets must lie in [0, {scores.shape[1]})")


def to_probabilities(scores: torch.Tensor, from_logits: bool = True) -> torch.Tensor:
    """Softmax of logits in float32 (bf16 logits lose too much for calibration)."""
    scores = scores.float()
    return scores.softmax(dim=1) if from_logits else scores


def predictions(scores: torch.Tensor) -> torch.Tensor:
    """Top-1 class per sample (first index on ties, as ``torch.argmax``)."""
    return scores.argmax(dim=1)


def _topk_indices(scores: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, scores.shape[1])
    return scores.topk(k, dim=1, largest=True, sorted=True).indices


def _nan_to_none(x: float) -> Optional[float]:
    return None if x is None or math.isnan(x) else float(x)


# ---------------------------------------------------------------- accuracy

def topk_accuracy(scores: torch.Tensor, targets: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose target is among the k highest scores (k clamped to K)."""
    _check(scores, targets)
    if targets.numel() == 0:
        return float("nan")
    top = _topk_indices(scores, k)
    return (top == targets.to(top.device)[:, None]).any(dim=1).double().mean().item()


def top1_accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    return topk_accuracy(scores, targets, 1)


def per_class_accuracy(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) float64 recall of each class; NaN for a class without evaluation samples."""
    preds, targets = preds.reshape(-1).cpu(), targets.reshape(-1).cpu()
    support = torch.bincount(targets, minlength=num_classes)
    correct = torch.bincount(targets[preds == targets], minlength=num_classes)
    return _ratio(correct, support)


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    num, den = num.double(), den.double()
    out = torch.full_like(num, float("nan"))
    mask = den > 0
    out[mask] = num[mask] / den[mask]
    return out


def group_accuracy(class_acc: torch.Tensor, groups: Sequence[str]) -> dict[str, Optional[float]]:
    """Mean per-class accuracy within each group; ``None`` for a group with no evaluated class."""
    out: dict[str, Optional[float]] = {}
    for g in GROUPS:
        vals = [float(a) for a, gg in zip(class_acc.tolist(), groups) if gg == g and not math.isnan(a)]
        out[g] = sum(vals) / len(vals) if vals else None
    return out


def mean_class_accuracy(class_acc: torch.Tensor) -> float:
    """Balanced accuracy: the mean of per-class accuracies over evaluated classes."""
    v = class_acc[~class_acc.isnan()]
    return v.mean().item() if v.numel() else float("nan")


def worst_class_accuracy(class_acc: torch.Tensor) -> float:
    v = class_acc[~class_acc.isnan()]
    return v.min().item() if v.numel() else float("nan")


def harmonic_mean_accuracy(class_acc: torch.Tensor) -> float:
    """Harmonic mean of per-class accuracies; 0 as soon as one evaluated class has accuracy 0.

    That is the limit of K / sum(1/a_k) as any a_k -> 0, and it is why the metric is used:
    it punishes a model that gives up on a class, which the arithmetic mean hides.
    """
    v = class_acc[~class_acc.isnan()]
    if v.numel() == 0:
        return float("nan")
    if bool((v == 0).any()):
        return 0.0
    return (v.numel() / (1.0 / v).sum()).item()


# ---------------------------------------------------------------- F1

def _f1_from_counts(tp: torch.Tensor, pred_count: torch.Tensor, support: torch.Tensor) -> float:
    # Classes present in targets or predictions, as scikit-learn's average="macro".
    present = (support > 0) | (pred_count > 0)
    if not bool(present.any()):
        return float("nan")
    tp, fp, fn = tp.double(), (pred_count - tp).double(), (support - tp).double()
    f1 = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    return f1.mean().item()


def macro_f1(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> float:
    """Unweighted mean over classes of F1 = 2TP / (2TP + FP + FN).

    Averaged over the classes that occur among targets or predictions (scikit-learn's
    ``f1_score(average="macro")``); a class never predicted but present has F1 = 0.
    """
    preds, targets = preds.reshape(-1).cpu(), targets.reshape(-1).cpu()
    support = torch.bincount(targets, minlength=num_classes)
    pred_count = torch.bincount(preds, minlength=num_classes)
    tp = torch.bincount(targets[preds == targets], minlength=num_classes)
    return _f1_from_counts(tp, pred_count, support)


# ---------------------------------------------------------------- calibration

@dataclass
class CalibrationBins:
    """Sufficient statistics of equal-width confidence bins ((m-1)/M, m/M]."""

    count: torch.Tensor  # (M,) int64
    correct: torch.Tensor  # (M,) float64, number of correct predictions
    confidence: torch.Tensor  # (M,) float64, sum of confidences

    @property
    def n_bins(self) -> int:
        return self.count.numel()

    def edges(self) -> list[float]:
        return torch.linspace(0, 1, self.n_bins + 1, dtype=torch.float64).tolist()

    def add(self, other: "CalibrationBins") -> None:
        self.count += other.count
        self.correct += other.correct
        self.confidence += other.confidence

    def accuracy(self) -> torch.Tensor:
        return _ratio(self.correct, self.count)

    def mean_confidence(self) -> torch.Tensor:
        return _ratio(self.confidence, self.count)

    def ece(self) -> float:
        n = int(self.count.sum())
        if n == 0:
            return float("nan")
        used = self.count > 0
        gap = (self.correct[used] - self.confidence[used]).abs()  # = |B| * |acc - conf|
        return (gap.sum() / n).item()

    def to_dict(self) -> dict[str, Any]:
        return {
            "edges": self.edges(),
            "count": self.count.tolist(),
            "accuracy": [_nan_to_none(a) for a in self.accuracy().tolist()],
            "confidence": [_nan_to_none(c) for c in self.mean_confidence().tolist()],
        }


def calibration_bins(
    confidences: torch.Tensor, correct: torch.Tensor, n_bins: int = DEFAULT_BINS
) -> CalibrationBins:
    """Bin samples by confidence into ((m-1)/M, m/M] (Guo et al. 2017); 0 goes to the first bin."""
    conf = confidences.reshape(-1).detach().double().cpu()
    ok = correct.reshape(-1).detach().double().cpu()
    inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1]
    idx = torch.bucketize(conf, inner, right=False)  # inner[i-1] < c <= inner[i]
    return CalibrationBins(
        count=torch.bincount(idx, minlength=n_bins).long(),
        correct=torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, ok),
        confidence=torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf),
    )


def expected_calibration_error(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over max-probability confidence."""
    _check(probs, targets)
    conf, pred = probs.max(dim=1)
    return calibration_bins(conf, pred == targets.to(pred.device), n_bins).ece()


# ---------------------------------------------------------------- hierarchy

def capped_distances(H: torch.Tensor) -> torch.Tensor:
    """H with +inf (LCA at the root) replaced by max finite H + 1.

    Keeps H's float dtype: at K = 8,142 a float64 copy would be 530 MB, and LCA distances
    are small integers, exact in float32. Sums over it are taken in float64.
    """
    H = H.detach().cpu()
    if not H.is_floating_point():
        H = H.float()
    inf = torch.isinf(H)
    out = H.masked_fill(inf, float("-inf"))  # the only (K, K) copy
    top = out.max().item() if out.numel() else 0.0
    cap = (top if math.isfinite(top) else 0.0) + 1.0
    return out.masked_fill_(inf, cap)


def mistake_severity(preds: torch.Tensor, targets: torch.Tensor, H: torch.Tensor) -> float:
    """Mean capped H[y, top-1] over the wrong predictions (NaN when there is none)."""
    Hc = capped_distances(H)
    preds, targets = preds.reshape(-1).cpu(), targets.reshape(-1).cpu()
    wrong = preds != targets
    if not bool(wrong.any()):
        return float("nan")
    return Hc[targets[wrong], preds[wrong]].double().mean().item()


def _ahd_sum(top: torch.Tensor, targets: torch.Tensor, Hc: torch.Tensor) -> float:
    # Sum over samples of the mean capped distance from the target to each top-k class.
    d = Hc[targets[:, None], top].double()  # (N, k)
    return d.mean(dim=1).sum().item()


def average_hierarchical_distance(
    scores: torch.Tensor, targets: torch.Tensor, H: torch.Tensor, k: int = 1
) -> float:
    """Mean over ALL samples (correct ones too) of the mean capped H[y, c] over the top-k c.

    Bertinetto et al. 2020 ("Making better mistakes"); k is clamped to K.
    """
    _check(scores, targets)
    if targets.numel() == 0:
        return float("nan")
    Hc = capped_distances(H)
    top = _topk_indices(scores, k).cpu()
    return _ahd_sum(top, targets.cpu(), Hc) / targets.numel()


# ---------------------------------------------------------------- confusion

def mistake_pairs(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse off-diagonal confusion: sorted unique keys true*K + pred and their counts."""
    preds, targets = preds.reshape(-1).cpu().long(), targets.reshape(-1).cpu().long()
    wrong = preds != targets
    keys = targets[wrong] * num_classes + preds[wrong]
    return torch.unique(keys, sorted=True, return_counts=True)


def _merge_pairs(a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]):
    keys = torch.cat([a[0], b[0]])
    counts = torch.cat([a[1], b[1]])
    uniq, inv = torch.unique(keys, sorted=True, return_inverse=True)
    return uniq, torch.zeros(uniq.numel(), dtype=torch.long).index_add_(0, inv, counts)


def most_confused_from_pairs(
    keys: torch.Tensor, counts: torch.Tensor, num_classes: int
) -> tuple[list[Optional[int]], list[int]]:
    """Per true class, the predicted class it is most often mistaken for, and how often.

    Ties go to the smallest class index; a class never misclassified gets ``None``, 0.
    """
    best: list[Optional[int]] = [None] * num_classes
    best_n = [0] * num_classes
    if keys.numel() == 0:
        return best, best_n
    # unique() sorted keys by (true, pred); stable sorts keep pred ascending among ties.
    order = torch.sort(-counts, stable=True).indices
    keys, counts = keys[order], counts[order]
    order = torch.sort(torch.div(keys, num_classes, rounding_mode="floor"), stable=True).indices
    keys, counts = keys[order], counts[order]
    true = torch.div(keys, num_classes, rounding_mode="floor")
    first = torch.ones_like(true, dtype=torch.bool)
    first[1:] = true[1:] != true[:-1]
    for key, n in zip(keys[first].tolist(), counts[first].tolist()):
        best[key // num_classes] = key % num_classes
        best_n[key // num_classes] = n
    return best, best_n


def most_confused(
    preds: torch.Tensor, targets: torch.Tensor, num_classes: int
) -> tuple[list[Optional[int]], list[int]]:
    """Most-confused class per class from the confusion matrix, diagonal excluded."""
    return most_confused_from_pairs(*mistake_pairs(preds, targets, num_classes), num_classes)


def superclass_accuracy(
    class_acc: torch.Tensor | Sequence[float], superclasses: Sequence[str]
) -> dict[str, tuple[Optional[float], int]]:
    """Mean per-class accuracy of each superclass, with its number of evaluated classes.

    Keys keep first-appearance order of ``superclasses`` (one name per class).
    """
    accs = class_acc.tolist() if isinstance(class_acc, torch.Tensor) else list(class_acc)
    if len(accs) != len(superclasses):
        raise ValueError("one superclass name per class is needed")
    vals: dict[str, list[float]] = {}
    for a, s in zip(accs, superclasses):
        vals.setdefault(s, [])
        if a is not None and not math.isnan(a):
            vals[s].append(float(a))
    return {s: ((sum(v) / len(v)) if v else None, len(v)) for s, v in vals.items()}


# ---------------------------------------------------------------- streaming

class Accumulator:
    """Streaming evaluation: feed batches of scores and targets, read a summary.

    Keeps O(K + bins + mistakes) state. ``merge`` adds another accumulator's statistics
    (e.g. gathered from DDP ranks).
    """

    def __init__(
        self,
        train_counts: Sequence[int] | torch.Tensor,
        *,
        H: Optional[torch.Tensor] = None,
        class_names: Optional[Sequence[str]] = None,
        from_logits: bool = True,
        n_bins: int = DEFAULT_BINS,
        topk: Iterable[int] = (1, 5),
        ahd_k: Iterable[int] = (1, 5),
        many_above: int = 100,
        few_below: int = 20,
        few_inclusive: bool = False,
    ):
        self.train_counts = [int(c) for c in (train_counts.tolist() if isinstance(train_counts, torch.Tensor) else train_counts)]
        K = self.num_classes = len(self.train_counts)
        if class_names is not None and len(class_names) != K:
            raise ValueError(f"{len(class_names)} class names for {K} classes")
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(K)]
        if H is not None and tuple(H.shape) != (K, K):
            raise ValueError(f"H must be ({K}, {K}), got {tuple(H.shape)}")
        self.H = capped_distances(H) if H is not None else None
        self.distance_cap = None if H is None else float(self.H.max())
        self.from_logits = from_logits
        self.topk = sorted(set(int(k) for k in topk))
        self.ahd_k = sorted(set(int(k) for k in ahd_k)) if H is not None else []
        if 1 not in self.topk:
            self.topk.insert(0, 1)
        self.group_rule = {"many_above": many_above, "few_below": few_below, "few_inclusive": few_inclusive}
        self.groups = class_groups(self.train_counts, many_above, few_below, few_inclusive)

        self.n = 0
        self.support = torch.zeros(K, dtype=torch.long)
        self.correct = torch.zeros(K, dtype=torch.long)
        self.pred_count = torch.zeros(K, dtype=torch.long)
        self.topk_hits = {k: 0 for k in self.topk}
        self.bins = CalibrationBins(
            torch.zeros(n_bins, dtype=torch.long),
            torch.zeros(n_bins, dtype=torch.float64),
            torch.zeros(n_bins, dtype=torch.float64),
        )
        self.severity_sum = 0.0
        self.ahd_sum = {k: 0.0 for k in self.ahd_k}
        self.pairs = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))

    @torch.no_grad()
    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> "Accumulator":
        """Add one batch: scores (B, K) logits (or probabilities if from_logits=False), targets (B,)."""
        if scores.ndim != 2 or scores.shape[1] != self.num_classes:
            raise ValueError(f"scores must be (B, {self.num_classes}), got {tuple(scores.shape)}")
        _check(scores, targets)
        K = self.num_classes
        probs = to_probabilities(scores.detach(), self.from_logits)
        kmax = min(max(self.topk + self.ahd_k), K)
        conf, top = probs.topk(kmax, dim=1, sorted=True)
        top, conf = top.cpu(), conf[:, 0].cpu()
        y = targets.detach().cpu().long()
        pred = top[:, 0]
        hit = pred == y

        self.n += y.numel()
        self.support += torch.bincount(y, minlength=K)
        self.correct += torch.bincount(y[hit], minlength=K)
        self.pred_count += torch.bincount(pred, minlength=K)
        for k in self.topk:
            self.topk_hits[k] += int((top[:, : min(k, K)] == y[:, None]).any(dim=1).sum())
        self.bins.add(calibration_bins(conf, hit, self.bins.n_bins))
        if self.H is not None:
            wrong = ~hit
            self.severity_sum += self.H[y[wrong], pred[wrong]].double().sum().item()
            for k in self.ahd_k:
                self.ahd_sum[k] += _ahd_sum(top[:, : min(k, K)], y, self.H)
        self.pairs = _merge_pairs(self.pairs, mistake_pairs(pred, y, K))
        return self

    def merge(self, other: "Accumulator") -> "Accumulator":
        if other.num_classes != self.num_classes or other.topk != self.topk or other.ahd_k != self.ahd_k:
            raise ValueError("cannot merge accumulators with different settings")
        self.n += other.n
        self.support += other.support
        self.correct += other.correct
        self.pred_count += other.pred_count
        for k in self.topk:
            self.topk_hits[k] += other.topk_hits[k]
        self.bins.add(other.bins)
        self.severity_sum += other.severity_sum
        for k in self.ahd_k:
            self.ahd_sum[k] += other.ahd_sum[k]
        self.pairs = _merge_pairs(self.pairs, other.pairs)
        return self

    # ------------------------------------------------------------ results

    def class_accuracy(self) -> torch.Tensor:
        """(K,) float64 per-class accuracy, NaN where a class has no evaluation sample."""
        return _ratio(self.correct, self.support)

    def most_confused(self) -> tuple[list[Optional[int]], list[int]]:
        return most_confused_from_pairs(*self.pairs, self.num_classes)

    def summary(self) -> dict[str, Any]:
        """JSON-able dict of every metric (NaN written as None)."""
        acc = self.class_accuracy()
        n_wrong = self.n - int(self.correct.sum())
        groups = group_accuracy(acc, self.groups)
        evaluated = ~acc.isnan()
        worst = None
        if bool(evaluated.any()):
            masked = torch.where(evaluated, acc, torch.full_like(acc, float("inf")))
            worst = self.class_names[int(masked.argmin())]
        out: dict[str, Any] = {
            "num_samples": self.n,
            "num_classes": self.num_classes,
            "num_evaluated_classes": int(evaluated.sum()),
        }
        for k in self.topk:
            out[f"top{k}"] = _nan_to_none(self.topk_hits[k] / self.n if self.n else float("nan"))
        out.update(groups)
        out["group_sizes"] = {g: sum(1 for x in self.groups if x == g) for g in GROUPS}
        out["group_rule"] = dict(self.group_rule)
        out["mean_class_accuracy"] = _nan_to_none(mean_class_accuracy(acc))
        out["macro_f1"] = _nan_to_none(_f1_from_counts(self.correct, self.pred_count, self.support))
        out["worst_class_accuracy"] = _nan_to_none(worst_class_accuracy(acc))
        out["worst_class"] = worst
        out["harmonic_mean_accuracy"] = _nan_to_none(harmonic_mean_accuracy(acc))
        out["ece"] = _nan_to_none(self.bins.ece())
        out["reliability"] = self.bins.to_dict()
        if self.H is not None:
            out["mistake_severity"] = _nan_to_none(self.severity_sum / n_wrong if n_wrong else float("nan"))
            for k in self.ahd_k:
                out[f"ahd@{k}"] = _nan_to_none(self.ahd_sum[k] / self.n if self.n else float("nan"))
            out["distance_cap"] = self.distance_cap
        return out

    def per_class_rows(self) -> list[dict[str, Any]]:
        """One row per class: name, train count, group, eval count, accuracy, most-confused."""
        acc = self.class_accuracy().tolist()
        best, best_n = self.most_confused()
        rows = []
        for k in range(self.num_classes):
            rows.append({
                "index": k,
                "name": self.class_names[k],
                "train_count": self.train_counts[k],
                "group": self.groups[k],
                "eval_count": int(self.support[k]),
                "accuracy": _nan_to_none(acc[k]),
                "most_confused": None if best[k] is None else self.class_names[best[k]],
                "most_confused_count": best_n[k],
            })
        return rows


def summarize(
    scores: torch.Tensor,
    targets: torch.Tensor,
    train_counts: Sequence[int] | torch.Tensor,
    **options: Any,
) -> dict[str, Any]:
    """Summary of all metrics for one (N, K) score tensor; options as for :class:`Accumulator`."""
    return Accumulator(train_counts, **options).update(scores, targets).summary()


PER_CLASS_COLUMNS = (
    "index", "name", "train_count", "group", "eval_count", "accuracy", "most_confused", "most_confused_count",
)


def write_per_class_csv(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write per-class rows (from :meth:`Accumulator.per_class_rows`) as CSV; empty cell = None."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({c: ("" if row.get(c) is None else row[c]) for c in PER_CLASS_COLUMNS})
    return path
