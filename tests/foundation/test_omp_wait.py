"""OpenMP wait policy chosen at start-up: sleeping waits when other processes are runnable."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hgltr_cli import omp_wait


def test_runnable_now_reads_the_R_of_loadavg(tmp_path):
    f = tmp_path / "loadavg"
    f.write_text("0.52 0.40 0.31 3/120 9999\n")
    assert omp_wait.runnable_now(str(f)) == 3
    f.write_text("garbage\n")
    assert omp_wait.runnable_now(str(f)) is None
    assert omp_wait.runnable_now(str(tmp_path / "missing")) is None


@pytest.mark.parametrize("samples, expected", [([3, 3, 3], 2), ([3, 1, 3], 0), ([1, 1, 1], 0), ([2, None, 2], None)])
def test_others_runnable_counts_only_processes_runnable_in_every_sample(samples, expected):
    it = iter(samples)
    assert omp_wait.others_runnable(lambda: next(it), samples=len(samples), interval=0) == expected


def test_busy_cores_choose_passive_waits(monkeypatch):
    monkeypatch.setattr(omp_wait, "our_threads", lambda env: 2)
    monkeypatch.setattr(omp_wait.os, "cpu_count", lambda: 2)
    env: dict = {}
    assert omp_wait.choose_wait_policy(env, others=lambda: 1) == "PASSIVE"
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.parametrize("others, cpus", [(lambda: 0, 2), (lambda: None, 2), (lambda: 2, 8)])
def test_idle_or_roomy_machines_keep_the_default(monkeypatch, others, cpus):
    monkeypatch.setattr(omp_wait, "our_threads", lambda env: 2)
    monkeypatch.setattr(omp_wait.os, "cpu_count", lambda: cpus)
    env: dict = {}
    assert omp_wait.choose_wait_policy(env, others=others) is None
    assert env == {}


def test_a_policy_the_user_set_is_never_changed():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    assert omp_wait.choose_wait_policy(env, others=lambda: 64) is None
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


PROBE = """
import os, sys
from hgltr_cli import cli, omp_wait
omp_wait.others_runnable = lambda: {busy}
try:
    cli.main({argv!r})
except SystemExit:
    pass
print("POLICY", os.environ.get("OMP_WAIT_POLICY"), "torch" in sys.modules)
"""


def _policy_after(argv, busy) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", PROBE.format(busy=busy, argv=argv)], env=env,
                         capture_output=True, text=True, timeout=120)
    line = [x for x in out.stdout.splitlines() if x.startswith("POLICY")]
    assert line, out.stdout + out.stderr
    return line[0]


def test_the_cli_chooses_before_torch_loads_and_not_for_help():
    busy = os.cpu_count() or 1  # every core held by someone else
    assert _policy_after(["list", "losses"], busy) == "POLICY PASSIVE True"  # set, then torch loaded
    assert _policy_after(["list", "losses"], 0) == "POLICY None True"
    assert _policy_after(["--help"], busy) == "POLICY None False"  # no probe, no torch


def test_our_threads_follows_omp_num_threads(monkeypatch):
    monkeypatch.setattr(omp_wait.os, "cpu_count", lambda: 2)
    assert omp_wait.our_threads({"OMP_NUM_THREADS": "1"}) == 1
    assert omp_wait.our_threads({"OMP_NUM_THREADS": "bad"}) == len(os.sched_getaffinity(0))
    # one thread on a 2-core machine with one busy neighbour still has a free core: keep the default
    env = {"OMP_NUM_THREADS": "1"}
    assert omp_wait.choose_wait_policy(env, others=lambda: 1) is None
    assert env == {"OMP_NUM_THREADS": "1"}
