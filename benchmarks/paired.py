"""Paired (interleaved) measurement of hgltr's engine step and the naive reference, for busy machines.

On a shared machine the load changes over minutes, so timing hgltr first and the naive loop
afterwards compares two different machines. Here both live in one process and their steps
alternate (hgltr, naive, hgltr, naive, ...), so each pair sees the same load; the speed-up is
the median of the per-pair ratios. Peak memory is measured per variant during its own warm-up,
with freed heap memory handed back to the OS (malloc_trim) before each, so the RSS delta
belongs to that variant.
"""
from __future__ import annotations

import ctypes
import gc
import time

import torch

from benchmarks.common import PeakMemory, stats, sync
from benchmarks.train_bench import EngineBench, NaiveBench, count_text_calls, step_flops


def _trim() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # pragma: no cover - not glibc
        pass


def run_paired_case(case: dict, plugins) -> dict:
    if not case.get("naive"):  # nothing to pair with
        from benchmarks.train_bench import run_train_case
        return run_train_case(case, plugins)
    device = torch.device(case.get("device", "cpu"))
    model, method, batch, precision = case["model"], case["peft"], case["batch"], case["precision"]
    K = case.get("classes", 1000)
    warmup, repeats = case.get("warmup", 1), case.get("repeats", 3)
    engine = EngineBench(model, method, batch, precision, K, plugins, device)
    naive = NaiveBench(engine, plugins)
    # the naive loop computes the engine's fp32 loss (checked before anything is timed)
    engine.trainer.precision, saved = "fp32", engine.trainer.precision
    diff = abs(engine.loss_value() - naive.loss_value())
    engine.trainer.precision = saved
    mem = {}
    for name, bench in (("hgltr", engine), ("naive", naive)):
        _trim()
        with PeakMemory(device) as m:
            for _ in range(max(1, warmup)):
                bench.step()
            sync(device)
        mem[name] = m.result()
    t_h, t_n = [], []
    calls = count_text_calls(engine)
    for _ in range(repeats):
        for bench, acc in ((engine, t_h), (naive, t_n)):
            t0 = time.perf_counter()
            bench.step()
            sync(device)
            acc.append(time.perf_counter() - t0)
    calls.restore()
    fl = step_flops(engine, batch, engine.size, K, device) if case.get("flops", True) else None
    out = {"model": model, "peft": method, "batch": batch, "precision": precision, "classes": K, "paired": True,
           "hgltr": {"step_s": stats(t_h), "images_per_s": stats([batch / t for t in t_h]), "memory": mem["hgltr"],
                     "text_encoder_calls_during_steps": calls.n},
           "naive": {"step_s": stats(t_n), "images_per_s": stats([batch / t for t in t_n]), "memory": mem["naive"],
                     "loss_abs_diff_vs_hgltr_fp32": diff,
                     "what": "open_clip.create_model default blocks (nn.MultiheadAttention), same PEFT modules, "
                             "heads and losses, eager fp32, plain loop; steps interleaved with hgltr's"},
           "speedup_pairs": stats([n / h for h, n in zip(t_h, t_n)])}
    if fl:
        out["flops"] = fl
        out["hgltr"]["achieved_gflops"] = stats([fl["per_step"] / t / 1e9 for t in t_h])
    return out
