#!/usr/bin/env python
"""hgltr benchmark suite: one entry point, one run, one machine.

    python benchmarks/run.py [--quick | --smoke] [--device cpu|cuda] [--out FILE.json]

Measures, in one run (medians over repeats after warm-up, with min and max):
1. training-step images/s and peak memory for full-size ViT-B-16 (random init) with every PEFT
   method at a fixed batch, through hgltr's engine (Trainer's step), and a naive reference
   (open_clip's default model, eager fp32, same modules) -> speedup_vs_naive;
2. MFU: FLOPs per step (torch.utils.flop_counter, math SDPA backend) x steps/s / the peak of a
   large matmul measured in this run on this device and dtype;
3. eval and predict throughput; build-hierarchy time and memory for 1,000 and 8,142 classes;
   text-prototype time (and that steps never call the text tower);
4. data-pipeline images/s (imagefolder JPEGs, train transform, configured workers) vs the model;
5. the classifier + losses step from cached features (`--peft none` after epoch 1) at 1,000 and
   8,142 classes: the part of a step that grows with K.

--quick: the default method (adapter) at the auto precision plus the naive reference; prints one
JSON line with speedup_vs_naive and mfu (under 5 minutes on 2 cores).
--smoke: the same machinery on hgltr-tiny-vit in seconds (what tests/benchmarks run).

A full run writes benchmarks/results/<device>.json and the table in benchmarks/README.md.
With ONEDNN_MAX_CPU_ISA set (e.g. AVX512_CORE_BF16: a CPU without AMX) the cap is recorded in the
JSON and the command, a full run writes benchmarks/results/<device>-<isa>.json and leaves the
README table alone.
Each training case runs in its own process so peak memory is per case.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PEFT_METHODS = ["adapter", "lora", "lift", "vpt-shallow", "vpt-deep", "none"]
RESULT_TAG = "BENCH_RESULT "
README = REPO / "benchmarks" / "README.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"


def _plugins():
    from hgltr_cli.plugins import load_plugins
    return load_plugins(warn=False)


def plan(args) -> dict:
    """What the run measures, by mode."""
    import torch

    from hgltr_cli.engine.runtime import resolve_precision

    device = torch.device(args.device)
    auto = resolve_precision("auto", device)
    precisions = ["fp32"] + (["bf16"] if auto == "bf16" else [])
    if args.smoke:
        return {"mode": "smoke", "model": "hgltr-tiny-vit", "batch": 8, "classes": 20, "methods": ["adapter", "lora"],
                "precisions": precisions, "auto_precision": auto, "naive": True, "warmup": 1, "repeats": 2,
                "peak_n": 256, "eval": {"batch": 8, "precisions": precisions}, "hierarchy_sizes": [50],
                "hierarchy_repeats": 1, "text_prompts": 8, "data": {"images": 16, "workers": [0], "epochs": 1},
                "predict_images": 4, "head": {"batch": 8, "classes": [20, 60]}, "inprocess": True}
    if args.quick:
        return {"mode": "quick", "model": "ViT-B-16", "batch": args.batch or 32, "classes": args.classes,
                "methods": ["adapter"], "precisions": [auto], "auto_precision": auto, "naive": True,
                "warmup": 1, "repeats": 3, "peak_n": 4096, "inprocess": False}
    return {"mode": "full", "model": "ViT-B-16", "batch": args.batch or 32, "classes": args.classes,
            "methods": args.methods or PEFT_METHODS, "precisions": precisions, "auto_precision": auto,
            "naive": True, "warmup": 1, "repeats": args.repeats or 3, "peak_n": 4096,
            "eval": {"batch": 32, "precisions": precisions}, "hierarchy_sizes": [1000, 8142], "hierarchy_repeats": 3,
            "text_prompts": 100, "data": {"images": 192, "workers": [0, 2], "epochs": 2}, "predict_images": 32,
            "head": {"batch": 128, "classes": [1000, 8142]}, "inprocess": False}


# ----------------------------------------------------------------------------- case execution

def run_case(case: dict, inprocess: bool) -> dict:
    """A measurement case, in this process (smoke) or in a fresh one (peak memory per case)."""
    if inprocess:
        return _dispatch(case)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"case {case} failed (rc {proc.returncode}):\n{proc.stderr[-4000:]}")


def _dispatch(case: dict) -> dict:
    from benchmarks import misc_bench, paired, train_bench

    plugins = _plugins()
    kind = case["kind"]
    if kind == "train":  # with a naive reference: interleaved steps, so both see the same machine load
        return paired.run_paired_case(case, plugins)
    if kind == "eval":
        return train_bench.run_eval_case(case, plugins)
    if kind == "head":
        return train_bench.run_head_case(case, plugins)
    if kind == "text":
        with tempfile.TemporaryDirectory() as tmp:
            return misc_bench.bench_text(case["model"], case["prompts"], plugins, Path(tmp))
    if kind == "predict":
        with tempfile.TemporaryDirectory() as tmp:
            return misc_bench.bench_predict(Path(tmp), case["model"], "adapter", case["images"], case["batch"], plugins)
    raise ValueError(kind)


def measure_peaks(device, precisions, n, log) -> dict:
    from benchmarks.common import matmul_peak
    out = {}
    for p in precisions:
        out[p] = matmul_peak(device, p, n)
        log(f"matmul peak {p}: {out[p]['gflops']['median']:.1f} GFLOP/s (n={n})")
    return out


def _merge_peaks(first: dict, last: dict) -> dict:
    """Both peak measurements (start and end of the run) pooled: median/min/max over all repeats."""
    from benchmarks.common import stats
    merged = {}
    for p in first:
        vals = []
        for m in (first[p], last.get(p)):
            if m:
                g = m["gflops"]
                vals += [g["median"], g["min"], g["max"]]
        merged[p] = {"n": first[p]["n"], "gflops": stats(vals), "start": first[p]["gflops"],
                     "end": (last.get(p) or {}).get("gflops")}
    return merged


# ----------------------------------------------------------------------------- summary

def summarise(results: dict) -> dict:
    peaks = results["matmul_peak"]
    auto = results["plan"]["auto_precision"]
    train: dict = {}
    naive: dict = {}
    for case in results["train"]:
        m = case["peft"]
        if "naive" in case:
            naive[m] = case["naive"]
        train.setdefault(m, {})[case["precision"]] = case
    summary: dict = {"train": {}, "auto_precision": auto}
    for m, by_p in train.items():
        row = {}
        for p, case in by_p.items():
            ips = case["hgltr"]["images_per_s"]["median"]
            entry = {"batch": case["batch"], "images_per_s": case["hgltr"]["images_per_s"],
                     "peak_memory_mb": case["hgltr"]["memory"]["peak_mb"]}
            if "speedup_pairs" in case:  # interleaved with the naive loop: median of per-pair ratios
                entry["speedup_vs_naive"] = round(case["speedup_pairs"]["median"], 3)
            elif m in naive:
                entry["speedup_vs_naive"] = round(ips / naive[m]["images_per_s"]["median"], 3)
            if "flops" in case and p in peaks:
                peak = peaks[p]["gflops"]["median"] * 1e9
                entry["gflop_per_image"] = round(case["flops"]["per_step"] / case["batch"] / 1e9, 2)
                entry["mfu"] = round(case["flops"]["per_step"] * ips / case["batch"] / peak, 6)
            row[p] = entry
        if m in naive:
            row["naive_fp32"] = {"batch": next(iter(by_p.values()))["batch"], "images_per_s": naive[m]["images_per_s"],
                                 "peak_memory_mb": naive[m]["memory"]["peak_mb"],
                                 "loss_abs_diff_vs_hgltr_fp32": naive[m]["loss_abs_diff_vs_hgltr_fp32"]}
            if "fp32" in peaks and "flops" in next(iter(by_p.values())):
                c = next(iter(by_p.values()))
                row["naive_fp32"]["mfu"] = round(c["flops"]["per_step"] * naive[m]["images_per_s"]["median"]
                                                 / c["batch"] / (peaks["fp32"]["gflops"]["median"] * 1e9), 6)
        summary["train"][m] = row
    ev = results.get("eval")
    if ev:
        summary["eval"] = {}
        for p in results["plan"]["eval"]["precisions"]:
            ips = ev[p]["images_per_s"]["median"]
            summary["eval"][p] = {"images_per_s": ev[p]["images_per_s"],
                                  "mfu": round(ev["flops"]["per_image"] * ips / (peaks[p]["gflops"]["median"] * 1e9), 6)}
    return summary


def quick_line(results: dict) -> dict:
    s = results["summary"]
    p = results["plan"]["auto_precision"]
    a = s["train"]["adapter"]
    return {"quick": True, "model": results["plan"]["model"], "method": "adapter", "precision": p,
            "batch": results["plan"]["batch"], "classes": results["plan"]["classes"],
            "images_per_s": round(a[p]["images_per_s"]["median"], 3),
            "naive_images_per_s": round(a["naive_fp32"]["images_per_s"]["median"], 3),
            "speedup_vs_naive": a[p].get("speedup_vs_naive"), "mfu": a[p].get("mfu"),
            "peak_gflops": round(results["matmul_peak"][p]["gflops"]["median"], 1),
            "load_average": results["env"].get("load_average"), "seconds": round(results["seconds"], 1),
            **({"onednn_max_cpu_isa": results["env"]["onednn_max_cpu_isa"]}
               if "onednn_max_cpu_isa" in results["env"] else {})}


def _f(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def _ips(d):
    return f"{d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f})"


def _table(title: str, columns: list[str], rows: list[list]) -> list[str]:
    """A titled Markdown table, as lines (with the blank lines around the title)."""
    return ["", title, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def markdown(results: dict) -> str:
    s, env, plan_ = results["summary"], results["env"], results["plan"]
    peaks = results["matmul_peak"]
    lines = [f"Command: `{results['command']}`  ",
             f"Date: {results['date']}; {env.get('cpu', '?')}, {env['threads']} threads, torch {env['torch']}, "
             f"open_clip {env['open_clip']}; load average at start {env.get('load_average')}, "
             f"at end {results.get('load_average_end')}; run took {results['seconds'] / 60:.1f} min.  ",
             "Matmul peak (n=%d): " % plan_["peak_n"] + ", ".join(
                 f"{p} {v['gflops']['median']:.0f} GFLOP/s ({v['gflops']['min']:.0f}-{v['gflops']['max']:.0f})"
                 for p, v in peaks.items()) + ".", "",
             f"Training step, {plan_['model']} random init, {plan_['classes']} classes, "
             "images/s median (min-max):", "",
             "| PEFT | batch | precision | images/s | speedup vs naive | MFU | GFLOP/image | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for m, row in s["train"].items():
        for p in plan_["precisions"]:
            if p not in row:
                continue
            e = row[p]
            lines.append(f"| {m} | {e['batch']} | {p} | {_ips(e['images_per_s'])} | {_f(e.get('speedup_vs_naive'))} | "
                         f"{_f(e.get('mfu'), 3)} | {_f(e.get('gflop_per_image'), 1)} | {e['peak_memory_mb']:.0f} |")
        if "naive_fp32" in row:
            e = row["naive_fp32"]
            lines.append(f"| {m} | {e['batch']} | naive fp32 | {_ips(e['images_per_s'])} | 1.00 | {_f(e.get('mfu'), 3)} | | "
                         f"{e['peak_memory_mb']:.0f} |")
    if results.get("compiled"):
        c = results["compiled"]
        lines += ["", f"torch.compile (adapter, {c['precision']}): {_ips(c['hgltr']['images_per_s'])} images/s, "
                      f"peak RSS {c['hgltr']['memory']['peak_mb']:.0f} MB, first step incl. compiling "
                      f"{c['hgltr']['compile_first_step_s']:.0f} s."]
    if "eval" in s:
        ev = results["eval"]
        lines += _table(f"Eval forward (`hgltr eval`'s forward, batch {ev['batch']}, "
                        f"{ev['flops']['per_image'] / 1e9:.1f} GFLOP/image):", ["precision", "images/s", "MFU"],
                        [[p, _ips(e["images_per_s"]), _f(e["mfu"], 3)] for p, e in s["eval"].items()])
    if results.get("head"):
        hd = results["head"]
        lines += _table(f"Classifier + losses step from cached features (what `--peft none` runs from epoch 2 on; "
                        f"{hd['model']} features, batch {hd['batch']}, {hd['precision']}):",
                        ["classes", "step ms", "images/s"],
                        [[K, _ips(e["step_ms"]), _ips(e["images_per_s"])] for K, e in hd["by_classes"].items()])
    if results.get("predict"):
        pr = results["predict"]
        if "images_per_s" in pr:
            lines += ["", f"Predict (`predict_files`, JPEG decode + transform + forward, fp32, batch {pr['batch']}): "
                          f"{_ips(pr['images_per_s'])} images/s."]
    if results.get("hierarchy"):
        lines += ["", "build-hierarchy (`--source file`, 7-level synthetic tree):", "",
                  "| classes | command wall s | command max RSS MB | CLI start-up s | H s | S s | H+S MB |",
                  "|---|---|---|---|---|---|---|"]
        for K, h in results["hierarchy"].items():
            if "error" in h:
                lines.append(f"| {K} | error | | | | | |")
                continue
            lines.append(f"| {K} | {h['command_wall_s']['median']:.2f} | {h['command_max_rss_mb']['median']:.0f} | "
                         f"{h['cli_startup_wall_s']['median']:.2f} | {h['distance_matrix_s']['median']:.3f} | "
                         f"{h['similarity_s']['median']:.3f} | {h['H_plus_S_mb']:.0f} |")
    if results.get("text"):
        t = results["text"]
        lines += ["", f"Text prototypes ({t['model']} text tower, {t['prompts']} prompts): "
                      f"{t['per_prompt_ms']:.1f} ms/prompt (1,000 classes ~{t['extrapolated_s']['1000']:.0f} s, "
                      f"8,142 ~{t['extrapolated_s']['8142']:.0f} s), once per run (cache hit {t['cache_hit_s'] * 1e3:.0f} ms); "
                      f"text-tower calls during training steps: "
                      f"{sum(c['hgltr']['text_encoder_calls_during_steps'] for c in results['train'])}."]
    if results.get("data"):
        d = results["data"]
        model_ips = max(e["images_per_s"]["median"] for row in s["train"].values() for k, e in row.items()
                        if k != "naive_fp32")
        lines += ["", f"Data pipeline (imagefolder, {d['source_size']}, train transform at {d['image_size']} px, "
                      f"batch {d['batch']}; configured workers = {d['configured_workers']}):", "",
                  "| workers | images/s | x fastest training step |", "|---|---|---|"]
        for w, e in d["by_workers"].items():
            lines.append(f"| {w} | {_ips(e['images_per_s'])} | {e['images_per_s']['median'] / model_ips:.1f} |")
    return "\n".join(lines) + "\n"


def update_readme(text: str) -> None:
    body = README.read_text() if README.is_file() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in body:
        body += f"\n{START}\n{END}\n"
    head, rest = body.split(START, 1)
    _, tail = rest.split(END, 1)
    README.write_text(f"{head}{START}\n{text}{END}{tail}")


# ----------------------------------------------------------------------------- main

def positive_int(text: str) -> int:
    """argparse type for counts (batch sizes, classes, repeats): a clear error instead of a crash mid-run."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def command_line(argv_shown: str) -> str:
    """The command that reproduces this run, the oneDNN ISA cap included when one is set."""
    from benchmarks.common import ISA_CAP_VAR, isa_cap

    cap = f"{ISA_CAP_VAR}={isa_cap()} " if isa_cap() else ""
    return f"{cap}python benchmarks/run.py {argv_shown}".strip()


def default_out(device_type: str) -> str:
    """results/<device>.json; an ISA-capped run gets its own file, so it never replaces the real one."""
    from benchmarks.common import isa_cap

    suffix = f"-{isa_cap().lower()}" if isa_cap() else ""
    return str(REPO / "benchmarks" / "results" / f"{device_type}{suffix}.json")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="adapter only, one JSON line (< 5 min on 2 cores)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, seconds (tests)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=None, help="JSON file to write (full run default: benchmarks/results/<device>.json)")
    ap.add_argument("--batch", type=positive_int, default=None)
    ap.add_argument("--classes", type=positive_int, default=1000, help="label-set size K of the training cases (iNat: 8142)")
    ap.add_argument("--batch-others", type=positive_int, default=None,
                    help="batch of the methods after the default one (default: --batch); a slow machine's time saver")
    ap.add_argument("--repeats", type=positive_int, default=None)
    ap.add_argument("--methods", nargs="*", default=None)
    ap.add_argument("--compile", action="store_true",
                    help="also time the default method under torch.compile (compile time reported)")
    ap.add_argument("--no-readme", action="store_true", help="do not update benchmarks/README.md")
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.case:
        print(RESULT_TAG + json.dumps(_dispatch(json.loads(args.case))), flush=True)
        return 0

    import torch

    from benchmarks.common import environment, isa_cap, load_average

    t_start = time.perf_counter()
    device = torch.device(args.device)
    p = plan(args)
    quiet = args.quick
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if quiet else (lambda *a: print(*a, flush=True))
    argv_shown = " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results: dict = {"command": command_line(argv_shown), "plan": p,
                     "date": time.strftime("%Y-%m-%d %H:%M"), "env": environment(device)}
    log(f"hgltr benchmarks ({p['mode']}): {results['env'].get('cpu', '')} load {results['env']['load_average']}")
    peaks_start = measure_peaks(device, p["precisions"], p["peak_n"], log)

    base = {"device": args.device, "model": p["model"], "batch": p["batch"], "classes": p["classes"],
            "warmup": p["warmup"], "repeats": p["repeats"]}
    results["train"] = []
    out = args.out
    if out is None and p["mode"] == "full":
        out = default_out(device.type)
    partial = f"{out}.partial" if out and p["mode"] == "full" else None
    if partial:
        Path(partial).parent.mkdir(parents=True, exist_ok=True)
    def save_partial():
        if partial:  # what is measured survives an interrupted long run
            Path(partial).write_text(json.dumps(results, indent=1) + "\n")

    def train_method(m):
        batch = p["batch"] if m == p["methods"][0] else (args.batch_others or p["batch"])
        for prec in p["precisions"]:
            case = {**base, "batch": batch, "kind": "train", "peft": m, "precision": prec,
                    "naive": p["naive"] and prec == p["auto_precision"]}
            r = run_case(case, p["inprocess"])
            results["train"].append(r)
            save_partial()
            msg = f"train {m:12s} {prec} batch {batch}: {r['hgltr']['images_per_s']['median']:.2f} img/s"
            if "naive" in r:
                msg += f"  (naive fp32 {r['naive']['images_per_s']['median']:.2f} img/s)"
            log(msg)

    # the default method first, then the other sections, then the other methods
    train_method(p["methods"][0])
    if args.compile:
        prec = p["auto_precision"]
        r = run_case({**base, "kind": "train", "peft": "adapter", "precision": prec, "naive": False,
                      "compile": True}, p["inprocess"])
        results["compiled"] = r
        log(f"train adapter {prec} compiled: {r['hgltr']['images_per_s']['median']:.2f} img/s, "
            f"first step (compile) {r['hgltr']['compile_first_step_s']:.1f} s")
    if p.get("eval"):
        results["eval"] = run_case({**base, "kind": "eval", "batch": p["eval"]["batch"],
                                    "precisions": p["eval"]["precisions"]}, p["inprocess"])
        log("eval: " + ", ".join(f"{q} {results['eval'][q]['images_per_s']['median']:.2f} img/s"
                                 for q in p["eval"]["precisions"]))
    if p.get("head"):
        prec = p["auto_precision"]
        results["head"] = run_case({**base, "kind": "head", "batch": p["head"]["batch"], "precision": prec,
                                    "classes_list": p["head"]["classes"], "warmup": 2,
                                    "repeats": max(5, p["repeats"] * 3)}, p["inprocess"])
        log("head step: " + ", ".join(f"K={k} {v['step_ms']['median']:.1f} ms"
                                      for k, v in results["head"]["by_classes"].items()))
    if p.get("predict_images"):
        results["predict"] = run_case({**base, "kind": "predict", "images": p["predict_images"],
                                       "batch": min(32, p["batch"])}, p["inprocess"])
        log(f"predict: {results['predict'].get('images_per_s', {}).get('median', float('nan')):.2f} img/s")
    if p.get("text_prompts"):
        results["text"] = run_case({**base, "kind": "text", "prompts": p["text_prompts"]}, p["inprocess"])
        log(f"text prototypes: {results['text']['per_prompt_ms']:.1f} ms/prompt")
    if p.get("hierarchy_sizes"):
        from benchmarks.misc_bench import bench_hierarchy
        with tempfile.TemporaryDirectory() as tmp:
            results["hierarchy"] = {str(k): v for k, v in bench_hierarchy(
                Path(tmp), p["hierarchy_sizes"], p["hierarchy_repeats"]).items()}
        log("hierarchy: " + ", ".join(f"{k}: {v.get('command_wall_s', {}).get('median', float('nan')):.2f} s"
                                      for k, v in results["hierarchy"].items()))
    if p.get("data"):
        from benchmarks.misc_bench import bench_data, write_image_folder
        from benchmarks.train_bench import IMAGE_SIZE
        with tempfile.TemporaryDirectory() as tmp:
            root = write_image_folder(Path(tmp) / "imgs", p["data"]["images"])
            results["data"] = bench_data(root, IMAGE_SIZE[p["model"]], p["batch"], p["data"]["workers"], _plugins(),
                                         epochs=p["data"]["epochs"])
        log("data: " + ", ".join(f"{w} workers {v['images_per_s']['median']:.1f} img/s"
                                 for w, v in results["data"]["by_workers"].items()))
    save_partial()
    for m in p["methods"][1:]:
        train_method(m)
    peaks_end = measure_peaks(device, p["precisions"], p["peak_n"], log)
    results["matmul_peak"] = _merge_peaks(peaks_start, peaks_end)
    results["load_average_end"] = load_average()
    results["seconds"] = time.perf_counter() - t_start
    results["summary"] = summarise(results)

    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1) + "\n")
        if partial and Path(partial).exists():
            Path(partial).unlink()
    if p["mode"] == "quick":
        print(json.dumps(quick_line(results)), flush=True)
    else:
        text = markdown(results)
        print(text)
        if p["mode"] == "full" and not args.no_readme and not isa_cap():
            update_readme(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
