"""Pick OpenMP's wait policy at start-up from how busy the CPUs are.

torch's OpenMP threads spin while they wait for each other. When another process holds a core,
every parallel op then waits for a descheduled thread: measured on 2 cores with one busy process
beside `hgltr eval`, 81 img/s spinning against 456 img/s with sleeping waits (PASSIVE). On an idle
machine spinning is faster (730 vs 534 img/s). So the choice is made per command: if other
processes are runnable now, so that our threads cannot each have a core, waits sleep.

OpenMP reads the policy once, when torch loads its runtime, so this must run before torch is
imported. A policy the user set (OMP_WAIT_POLICY in the environment) is never changed.
"""
from __future__ import annotations

import os
import time
from typing import Callable, MutableMapping, Optional

VAR = "OMP_WAIT_POLICY"
LOADAVG = "/proc/loadavg"


def runnable_now(path: str = LOADAVG) -> Optional[int]:
    """Runnable tasks on the machine right now (the R of /proc/loadavg's "R/T"), this one included."""
    try:
        with open(path, encoding="ascii") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def others_runnable(probe: Callable[[], Optional[int]] = runnable_now, samples: int = 5,
                    interval: float = 0.01) -> Optional[int]:
    """Other processes that stay runnable over a few samples (the minimum: a busy neighbour is
    runnable in every sample, a kernel thread waking once is not). None where it cannot be read."""
    seen = []
    for i in range(samples):
        r = probe()
        if r is None:
            return None
        seen.append(r)
        if i + 1 < samples:
            time.sleep(interval)
    return max(0, min(seen) - 1)


def our_threads(environ: MutableMapping[str, str] = os.environ) -> int:
    """torch's intra-op thread count: OMP_NUM_THREADS when set, else the cores this process may use."""
    try:
        return max(1, int(environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def choose_wait_policy(environ: MutableMapping[str, str] = os.environ,
                       others: Optional[Callable[[], Optional[int]]] = None) -> Optional[str]:
    """Set OMP_WAIT_POLICY=PASSIVE in `environ` when other runnable processes leave fewer free
    cores than our threads; returns the policy set, or None when nothing was changed."""
    if environ.get(VAR):  # the user's choice
        return None
    busy = (others or others_runnable)()
    if busy is None or busy == 0:
        return None
    free = (os.cpu_count() or 1) - busy
    if free >= our_threads(environ):
        return None
    environ[VAR] = "PASSIVE"
    return "PASSIVE"
