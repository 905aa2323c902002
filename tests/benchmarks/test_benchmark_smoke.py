"""benchmarks/run.py's machinery on hgltr-tiny-vit (--smoke): every section runs and reports its fields.

Speed is never asserted here: numbers are measured by benchmarks/run.py, not by tests.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def start_smoke(folder: Path):
    """`benchmarks/run.py --smoke` in its own process (started early: it runs beside the other tests)."""
    out = folder / "smoke.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HGLTR_CACHE_DIR": str(folder / "cache")}
    with open(folder / "stdout", "w") as so, open(folder / "stderr", "w") as se:  # files: a full pipe would block it
        proc = subprocess.Popen([sys.executable, str(REPO / "benchmarks" / "run.py"), "--smoke", "--out", str(out)],
                                stdout=so, stderr=se, cwd=str(folder), env=env)
    return proc, folder


@pytest.mark.early_start.with_args(start_smoke)
def test_smoke_run_writes_every_section(early_started):
    proc, folder = early_started
    proc.wait(timeout=600)
    stdout, stderr = (folder / "stdout").read_text(), (folder / "stderr").read_text()
    assert proc.returncode == 0, stderr[-3000:]
    out = folder / "smoke.json"
    res = json.loads(out.read_text())
    assert res["plan"]["mode"] == "smoke"
    for p in res["plan"]["precisions"]:
        assert res["matmul_peak"][p]["gflops"]["median"] > 0
    methods = res["plan"]["methods"]
    assert [c["peft"] for c in res["train"]] == [m for m in methods for _ in res["plan"]["precisions"]]
    for case in res["train"]:
        h = case["hgltr"]
        assert set(h["images_per_s"]) == {"median", "min", "max", "n"}
        assert h["images_per_s"]["min"] <= h["images_per_s"]["median"] <= h["images_per_s"]["max"]
        assert h["memory"]["peak_mb"] > 0
        assert h["text_encoder_calls_during_steps"] == 0
        assert case["flops"]["per_step"] > 0 and case["flops"]["per_image"] > 0
        if "naive" in case:
            assert case["naive"]["loss_abs_diff_vs_hgltr_fp32"] < 1e-4
    for m in methods:
        row = res["summary"]["train"][m]
        for p in res["plan"]["precisions"]:
            assert row[p]["speedup_vs_naive"] > 0 and row[p]["mfu"] > 0
    assert res["eval"]["flops"]["per_image"] > 0 and res["summary"]["eval"]
    assert res["predict"]["images"] == res["plan"]["predict_images"]
    assert list(res["head"]["by_classes"]) == [str(k) for k in res["plan"]["head"]["classes"]]
    for e in res["head"]["by_classes"].values():
        assert 0 < e["step_ms"]["min"] <= e["step_ms"]["median"] <= e["step_ms"]["max"]
    assert res["text"]["prompts"] == res["plan"]["text_prompts"]
    for h in res["hierarchy"].values():
        assert "error" not in h, h
        assert h["levels"] == 7 and h["command_max_rss_mb"]["median"] > 0
    assert res["data"]["by_workers"]["0"]["images_per_s"]["median"] > 0
    assert "| adapter |" in stdout  # the Markdown table
    assert "Classifier + losses step from cached features" in stdout


def test_flops_match_the_analytic_count_for_a_vit_block():
    """The FLOP counter sees attention (math SDPA backend): a ViT's forward FLOPs equal the closed form."""
    sys.path.insert(0, str(REPO))
    import torch
    from open_clip.transformer import VisionTransformer

    from benchmarks.train_bench import count_flops

    width, layers, patch, size, heads = 64, 2, 8, 32, 4
    vit = VisionTransformer(image_size=size, patch_size=patch, width=width, layers=layers, heads=heads,
                            mlp_ratio=4.0, output_dim=16, block_type="custom").eval()
    n = (size // patch) ** 2 + 1
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        got = count_flops(lambda: vit(x))
    patch_embed = 2 * (size // patch) ** 2 * width * 3 * patch * patch
    per_block = 2 * n * width * 3 * width + 2 * 2 * n * n * width + 2 * n * width * width + 2 * 2 * n * width * 4 * width
    proj = 2 * width * 16
    assert got == patch_embed + layers * per_block + proj


def test_an_isa_capped_run_says_so_and_keeps_its_own_results(monkeypatch):
    """ONEDNN_MAX_CPU_ISA changes the matmul peak: the command, the environment and the quick line
    carry it, and a full run's default JSON is not the real run's file."""
    sys.path.insert(0, str(REPO))
    import torch

    from benchmarks import run
    from benchmarks.common import environment

    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert run.command_line("--quick") == "python benchmarks/run.py --quick"
    assert run.default_out("cpu").endswith("results/cpu.json")
    assert "onednn_max_cpu_isa" not in environment(torch.device("cpu"))

    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
    assert run.command_line("--quick") == "ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16 python benchmarks/run.py --quick"
    assert run.default_out("cpu").endswith("results/cpu-avx512_core_bf16.json")
    env = environment(torch.device("cpu"))
    assert env["onednn_max_cpu_isa"] == "AVX512_CORE_BF16"
    stat = {"median": 1.0, "min": 1.0, "max": 1.0}
    results = {"plan": {"auto_precision": "bf16", "model": "m", "batch": 2, "classes": 8142}, "env": env, "seconds": 1.0,
               "matmul_peak": {"bf16": {"gflops": stat}},
               "summary": {"train": {"adapter": {"bf16": {"images_per_s": stat, "speedup_vs_naive": 1.0, "mfu": 0.5},
                                                 "naive_fp32": {"images_per_s": stat}}}}}
    line = run.quick_line(results)
    assert line["onednn_max_cpu_isa"] == "AVX512_CORE_BF16" and line["classes"] == 8142


@pytest.mark.parametrize("argv", [["--classes", "0"], ["--batch", "-4"], ["--repeats", "two"]])
def test_bad_counts_are_refused_before_anything_runs(argv, capsys):
    sys.path.insert(0, str(REPO))
    from benchmarks import run

    with pytest.raises(SystemExit) as exc:
        run.main(["--quick", *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and ("at least 1" in err or "whole number" in err)
