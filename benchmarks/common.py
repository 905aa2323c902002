"""Shared helpers of the benchmark suite: timing statistics, memory sampling, matmul peak, environment."""
from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Callable

import torch


def stats(values: list[float]) -> dict:
    """median / min / max / n of a list of measurements."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_repeats(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of fn, `repeats` times after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def rss_bytes() -> int:
    """Resident set size of this process now."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PeakMemory:
    """Peak memory while the block runs: RSS sampled every `interval` s on CPU (plus the baseline it
    started from), torch's allocator peak on CUDA. `peak_mb` is absolute, `delta_mb` above the start."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device = device
        self.interval = interval
        self.base = self.peak = 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            self.base = self.peak = rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, rss_bytes())
        return False

    def result(self) -> dict:
        kind = "cuda_max_allocated" if self.device.type == "cuda" else "rss"
        return {"kind": kind, "peak_mb": round(self.peak / 2**20, 1), "delta_mb": round((self.peak - self.base) / 2**20, 1)}


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def matmul_peak(device: torch.device, dtype: str, n: int, warmup: int = 2, repeats: int = 5) -> dict:
    """GFLOP/s of an n x n x n matmul (2 n^3 flops per call)."""
    dt = DTYPES[dtype]
    a = torch.randn(n, n, device=device).to(dt)
    b = torch.randn(n, n, device=device).to(dt)
    times = time_repeats(lambda: torch.mm(a, b), device, warmup, repeats)
    rates = [2 * n ** 3 / t / 1e9 for t in times]
    return {"n": n, "gflops": stats(rates)}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


ISA_CAP_VAR = "ONEDNN_MAX_CPU_ISA"


def isa_cap() -> str | None:
    """The oneDNN ISA cap of this run (e.g. AVX512_CORE_BF16: AMX off), or None.

    Capping the ISA measures the engine as on a CPU without AMX, the issue's machine kind; the cap
    changes the matmul peak, so it is part of every figure and of the command that reproduces them."""
    return os.environ.get(ISA_CAP_VAR) or None


def environment(device: torch.device) -> dict:
    import open_clip

    info = {"python": platform.python_version(), "torch": torch.__version__, "open_clip": open_clip.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "device": str(device),
            "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
            "load_average": load_average()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from hgltr_cli.engine.runtime import cpu_has_bf16
    info["cpu_bf16"] = cpu_has_bf16()
    if isa_cap():
        info["onednn_max_cpu_isa"] = isa_cap()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@contextmanager
def math_sdpa():
    """Force the math SDPA backend, so flop_counter sees attention as plain bmm's."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    with sdpa_kernel([SDPBackend.MATH]):
        yield
