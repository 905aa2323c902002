"""Hierarchy building, text prototypes, data pipeline and predict measurements."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import stats


# ----------------------------------------------------------------------------- build-hierarchy

def write_taxonomy(folder: Path, num_classes: int, levels: int = 7) -> tuple[Path, Path]:
    """A `file`-source level table (CSV, one column per level) and the class list for it."""
    from benchmarks.train_bench import synthetic_hierarchy

    hier = synthetic_hierarchy(num_classes, levels)
    folder.mkdir(parents=True, exist_ok=True)
    table, classes = folder / f"tree{num_classes}.csv", folder / f"classes{num_classes}.txt"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow([f"level{i + 1}" for i in range(levels)])
        for e in hier.entries:
            w.writerow(e.path[1:])  # root excluded; the class in the last cell
    classes.write_text("".join(f"{e.id}\n" for e in hier.entries))
    return table, classes


def _wait_measured(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace")
    proc.stdout.read()
    return {"wall_s": wall, "max_rss_mb": round(usage.ru_maxrss / 1024, 1), "rc": proc.returncode, "stderr": err[-2000:]}


def bench_hierarchy(folder: Path, sizes=(1000, 8142), repeats: int = 3) -> dict:
    """`hgltr build-hierarchy --source file` end to end (wall time and peak RSS of the command, which
    includes Python/torch start-up), plus in-process times of the maths (H and S) and file round trip."""
    from hgltr_cli.hierarchy import Hierarchy, load_hierarchy
    from hgltr_cli.hierarchy.distance import similarity

    hgltr = str(Path(sys.executable).with_name("hgltr"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    results = {}
    for K in sizes:
        table, classes = write_taxonomy(folder, K)
        out = folder / f"hier{K}.json"
        cmd = [hgltr, "build-hierarchy", "--source", "file", "--taxonomy", str(table), "--classes", str(classes),
               "-o", str(out)]
        runs = [_wait_measured(cmd, env) for _ in range(repeats)]
        if any(r["rc"] != 0 for r in runs):
            results[K] = {"error": runs[0]["stderr"]}
            continue
        # the command's floor: the same interpreter importing the CLI and printing its version
        base = [_wait_measured([hgltr, "--version"], env) for _ in range(repeats)]
        hier = load_hierarchy(out)
        t_h, t_s, t_load, mem_h = [], [], [], []
        for _ in range(repeats):
            fresh = Hierarchy.from_dict(hier.to_dict())
            t0 = time.perf_counter()
            H = fresh.distance_matrix("pair-depth")
            t_h.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            S = similarity(H, 1.0)
            t_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            load_hierarchy(out)
            t_load.append(time.perf_counter() - t0)
            mem_h.append(H.element_size() * H.numel() + S.element_size() * S.numel())
        results[K] = {
            "levels": max(hier.depths), "command_wall_s": stats([r["wall_s"] for r in runs]),
            "command_max_rss_mb": stats([r["max_rss_mb"] for r in runs]),
            "cli_startup_wall_s": stats([r["wall_s"] for r in base]),
            "cli_startup_max_rss_mb": stats([r["max_rss_mb"] for r in base]),
            "distance_matrix_s": stats(t_h), "similarity_s": stats(t_s), "load_file_s": stats(t_load),
            "H_plus_S_mb": round(mem_h[0] / 2**20, 1), "file_kb": round(out.stat().st_size / 1024, 1)}
    return results


# ----------------------------------------------------------------------------- text prototypes

def bench_text(model_name: str, num_prompts: int, plugins, cache_dir: Path, repeats: int = 1) -> dict:
    """encode_prompts for K prompts (once per run: build_model calls it, then steps read a buffer)."""
    from hgltr_cli.model.backbone import load_backbone
    from hgltr_cli.model.text import encode_prompts

    from benchmarks.train_bench import synthetic_hierarchy

    prompts = synthetic_hierarchy(num_prompts).prompts("paper")
    backbone = load_backbone(model_name, "none", plugins=plugins)
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            z = encode_prompts(backbone, prompts, device="cpu", cache_dir=None)
        times.append(time.perf_counter() - t0)
    # and from the cache (what a resumed or repeated run pays)
    t0 = time.perf_counter()
    encode_prompts(backbone, prompts, device="cpu", cache_dir=cache_dir)
    first_cached = time.perf_counter() - t0
    t0 = time.perf_counter()
    encode_prompts(backbone, prompts, device="cpu", cache_dir=cache_dir)
    hit = time.perf_counter() - t0
    per = stats(times)["median"] / num_prompts
    return {"model": model_name, "prompts": num_prompts, "encode_s": stats(times), "per_prompt_ms": per * 1e3,
            "extrapolated_s": {"1000": per * 1000, "8142": per * 8142}, "cache_write_s": first_cached,
            "cache_hit_s": hit, "dim": int(z.shape[1])}


# ----------------------------------------------------------------------------- data pipeline

def write_image_folder(root: Path, num_images: int, num_classes: int = 8, size=(500, 375)) -> Path:
    """ImageNet-sized JPEGs (smooth colour fields with texture, quality 90) in root/train/<class>/."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(num_images):
        c = i % num_classes
        d = root / "train" / f"class{c:02d}"
        d.mkdir(parents=True, exist_ok=True)
        f = rng.uniform(0.005, 0.05, size=3)
        img = np.stack([127 + 100 * np.sin(xx * f[k] + yy * f[(k + 1) % 3] + k) for k in range(3)], -1)
        img += rng.normal(0, 12, size=img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(d / f"img{i:05d}.jpg", quality=90)
    return root


def bench_data(root: Path, image_size: int, batch: int, workers_list, plugins, epochs: int = 2) -> dict:
    """Decoded + augmented images/s through the engine's train loader (imagefolder plugin, the
    model's train transform, per-sample seeded augmentation, batch normalisation in collate)."""
    from hgltr_cli.config import resolve
    from hgltr_cli.data.transforms import CLIP_MEAN, CLIP_STD, train_transform
    from hgltr_cli.engine.feed import Layout, train_loader
    from hgltr_cli.settings import TrainConfig

    cfg = resolve(TrainConfig, [{"dataset": {"name": "imagefolder", "root": str(root), "val_fraction": 0.0}}],
                  plugins=plugins)
    comp = plugins.get("datasets", "imagefolder")
    source = comp.factory(cfg.dataset, cfg.options.get("dataset") or comp.default_config())
    split = source.split("train")
    tf = train_transform(image_size, CLIP_MEAN, CLIP_STD)
    out = {"images": len(split), "image_size": image_size, "source_size": "500x375 JPEG q90", "batch": batch,
           "configured_workers": cfg.dataset.workers, "by_workers": {}}
    layout = Layout(batch)
    for workers in workers_list:
        rates = []
        for epoch in range(epochs + 1):
            loader = train_loader(split, tf, layout, 0, 0, epoch, 0, "random", workers=workers)
            it = iter(loader)
            next(it)  # first batch: worker start-up and pipeline fill, not throughput
            t0 = time.perf_counter()
            n = 0
            for images, _ in it:
                n += images.shape[0]
            dt = time.perf_counter() - t0
            close = getattr(loader, "close", None)
            if callable(close):
                close()
            if epoch > 0 or epochs == 0:  # epoch 0 is warm-up (page cache)
                rates.append(n / dt)
        out["by_workers"][str(workers)] = {"images_per_s": stats(rates)}
    return out


# ----------------------------------------------------------------------------- predict

def bench_predict(folder: Path, model_name: str, peft: str, num_images: int, batch: int, plugins) -> dict:
    """`hgltr predict`'s predict_files on JPEG files (decode + eval transform + forward + top-k)."""
    from types import SimpleNamespace

    from benchmarks.train_bench import EngineBench

    try:
        from hgltr_cli.commands.predict import predict_files
    except ImportError as exc:  # pragma: no cover
        return {"error": f"predict not available: {exc}"}
    write_image_folder(folder, num_images, num_classes=2)
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    eng = EngineBench(model_name, peft, batch, "fp32", 1000, plugins, torch.device("cpu"))
    try:
        from hgltr_cli.bundle import preprocess_for
        preprocess = preprocess_for(eng.cfg, eng.model)
    except ImportError:  # pragma: no cover
        info = eng.model.preprocess_info()
        preprocess = {"image_size": eng.size, "mean": info["mean"], "std": info["std"]}
    predictor = SimpleNamespace(model=eng.model, class_names=[f"class {i}" for i in range(1000)],
                                preprocess=preprocess, taxonomy_path=lambda k: [])
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        n = sum(1 for r in predict_files(predictor, files, top_k=5, batch_size=batch) if "predictions" in r)
        times.append(time.perf_counter() - t0)
    return {"model": model_name, "images": n, "batch": batch, "images_per_s": stats([n / t for t in times[1:] or times]),
            "note": "fp32 as `hgltr predict` runs today (no autocast in the command)"}
