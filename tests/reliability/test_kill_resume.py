"""Fault injection: a real `hgltr train` process is stopped at random moments and resumed.

N faults (default 7, at least 5; HGLTR_FAULTS=N, HGLTR_FAULT_SEED=S to vary) are drawn with a
seeded RNG: a moment (during start-up after a random delay, after a random number of fresh
optimizer steps, right after a validation, or at a random stage of a checkpoint write) and a
signal (SIGKILL, SIGTERM or SIGINT; each used). After each fault:
  - every checkpoint the index names verifies its checksums and loads (nothing lost),
  - the last checkpoint never moves backwards,
  - SIGINT/SIGTERM once training runs: exit 130/143, no traceback, "resume with" message;
then `hgltr train --resume RUN` (or the original command if the run dir was never written)
continues. The finished run must equal the uninterrupted reference run exactly: final and
best weights, best metric, and every logged loss, with no step logged twice.
The faults are dealt to two lanes that run side by side (one process each at a time), so that one
run's start-up overlaps the other's work.
"""
from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path


from faults import (TALLY, index_of, invoke, one_line, same_tensors, spawn, subprocess_env, train_args, weights)

SEED = int(os.environ.get("HGLTR_FAULT_SEED", "2"))
N_FAULTS = max(5, int(os.environ.get("HGLTR_FAULTS", "7")))
PHASES = ("startup", "mid-epoch", "epoch-end", "partial", "complete", "renamed", "indexed")
CKPT_STAGES = ("partial", "complete", "renamed", "indexed")
SIGNALS = (signal.SIGKILL, signal.SIGTERM, signal.SIGINT)
SLOW_WRITER = str(Path(__file__).with_name("slow_writer.py"))
PAUSE = 0.25  # seconds each checkpoint stage is held open by slow_writer.py


@dataclass
class Fault:
    phase: str
    sig: signal.Signals
    param: float  # startup: delay (s); mid-epoch: fresh steps; checkpoint stage: which write of the launch

    def __str__(self) -> str:
        what = {"startup": f"{self.param:.2f}s after launch", "mid-epoch": f"after {int(self.param)} fresh step(s)",
                "epoch-end": "right after a validation"}.get(self.phase, f"in write #{int(self.param)}, stage {self.phase}")
        return f"{self.sig.name} {what}"


def plan(seed: int, n: int) -> list[Fault]:
    """n faults: every phase and every signal used at least once (n >= 7 / 3), moments drawn at random."""
    rng = random.Random(seed)
    phases = [PHASES[i % len(PHASES)] for i in range(n)]
    sigs = [SIGNALS[i % len(SIGNALS)] for i in range(n)]
    rng.shuffle(phases)
    rng.shuffle(sigs)
    out = []
    for ph, sig in zip(phases, sigs):
        if ph == "startup":
            param = rng.uniform(0.05, 1.5)
        elif ph == "mid-epoch":
            param = rng.randint(1, 4)
        elif ph == "epoch-end":
            param = 1
        else:
            param = 1  # the launch's first checkpoint write; the stage is the random moment
        out.append(Fault(ph, signal.Signals(sig), param))
    return out


def _fresh(run: Path, since: float, event: str) -> int:
    p = run / "metrics.jsonl"
    if not p.is_file():
        return 0
    n = 0
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == event and rec.get("time", 0) >= since:
            n += 1
    return n


def _stages(log: Path, stage: str) -> int:
    return log.read_text().split().count(stage) if log.is_file() else 0


def launch_and_fault(argv: list[str], fault: Fault, run: Path, log: Path, env: dict):
    """Start `hgltr` (through slow_writer.py for checkpoint stages), deliver the fault; (signalled, rc, err)."""
    if log.exists():
        log.unlink()
    if fault.phase in CKPT_STAGES:
        import subprocess

        proc = subprocess.Popen([sys.executable, SLOW_WRITER, *argv], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
    else:
        proc = spawn(argv, env)
    t0, wall0 = time.monotonic(), time.time()
    signalled = False
    while proc.poll() is None:
        if fault.phase == "startup":
            hit = time.monotonic() - t0 >= fault.param
        elif fault.phase == "mid-epoch":
            hit = _fresh(run, wall0, "train") >= fault.param
        elif fault.phase == "epoch-end":
            hit = _fresh(run, wall0, "val") >= 1
        else:
            hit = _stages(log, fault.phase) >= fault.param
        if hit:
            proc.send_signal(fault.sig)
            signalled = True
            break
        time.sleep(0.004)
    _, err = proc.communicate(timeout=600)
    return signalled, proc.returncode, err


def verify_checkpoints(run: Path) -> int:
    """Load every checkpoint the index names (checksums first); the last one's step."""
    from hgltr_cli.engine.checkpoint import load_checkpoint

    idx = index_of(run)
    if not idx:
        return 0
    for name in sorted({idx["last"], idx.get("best")} - {None}):
        load_checkpoint(run / "checkpoints", name)  # raises CheckpointError on any damage
    return int(idx["entries"][idx["last"]]["step"])


def run_complete(run: Path) -> bool:
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").is_file() else []
    return any(r.get("event") == "done" for r in recs)


def compare_to_reference(run: Path, ref: Path) -> list[str]:
    problems = []
    if not same_tensors(weights(run, "last"), weights(ref, "last")):
        problems.append("final weights differ from the uninterrupted run")
    if not same_tensors(weights(run, "best"), weights(ref, "best")):
        problems.append("best weights differ from the uninterrupted run")
    a, b = index_of(run), index_of(ref)
    if (a["last"], a["best"], a["best_metric"]) != (b["last"], b["best"], b["best_metric"]):
        problems.append(f"index differs: {a['last'], a['best'], a['best_metric']} vs {b['last'], b['best'], b['best_metric']}")

    def logged(p: Path):
        recs = [json.loads(x) for x in (p / "metrics.jsonl").read_text().splitlines()]
        keep = ("event", "epoch", "step", "loss", "l_cls", "l_mse", "l_dis", "lr", "val_top1")
        return [{k: r.get(k) for k in keep} for r in recs if r["event"] in ("train", "val", "epoch", "done")]

    got, want = logged(run), logged(ref)
    if got != want:
        steps = [(r["event"], r["step"]) for r in got]
        dup = sorted({s for s in steps if steps.count(s) > 1})
        problems.append(f"metrics.jsonl differs from the uninterrupted run ({len(got)} vs {len(want)} records"
                        + (f"; logged twice: {dup}" if dup else "") + ")")
    return problems


LANES = 2  # chains run side by side (each a real `hgltr train` process at a time): the start-ups overlap


def run_lane(lane: int, faults: list[Fault], suite_data: Path, reference_run: Path, root: Path, env: dict,
             history: list[str]) -> None:
    """Deliver `faults` in order to chains of runs (root/lane<lane>-run<chain>), finish each chain, compare it with
    the reference run. Each lane has its own stage log, so two lanes can run at once."""
    chain, pending = 0, list(faults)
    log = root / f"stages-{lane}.log"
    env = {**env, "HGLTR_FAULT_LOG": str(log)}
    while pending:
        chain += 1
        run = root / f"lane{lane}-run{chain}"
        fresh_argv = train_args(suite_data / "data", suite_data / "hier.json", run)
        while pending and not (run.is_dir() and run_complete(run)):
            fault = pending[0]
            argv = ["train", "--resume", str(run), "--no-progress"] if (run / "config.yaml").is_file() else fresh_argv
            before = verify_checkpoints(run)
            signalled, rc, err = launch_and_fault(argv, fault, run, log, env)
            if not signalled:  # the process finished before the moment came: not a fault
                assert rc == 0, f"{fault}: run ended with {rc} before the fault:\n{err}"
                history.append(f"lane {lane}, chain {chain}: {fault}: not reached (run finished)")
                continue
            pending.pop(0)
            survived = False
            try:
                after = verify_checkpoints(run)
                assert after >= before, f"{fault}: last checkpoint moved back from step {before} to {after}"
                started = '"train"' in (run / "metrics.jsonl").read_text() if (run / "metrics.jsonl").is_file() else False
                if fault.sig != signal.SIGKILL and rc != 0 and fault.phase != "startup" and started:
                    assert rc == {signal.SIGINT: 130, signal.SIGTERM: 143}[fault.sig], f"{fault}: exit {rc}\n{err}"
                    assert "Traceback" not in err, f"{fault}: traceback on a signal\n{err}"
                    assert f"resume with: hgltr train --resume {run}" in one_line(err), err
                    assert index_of(run)["last"].startswith("step-") or run_complete(run), index_of(run)
                survived = True
            except Exception:
                TALLY.lost(f"{fault}")
                raise
            finally:
                TALLY.fault(survived, str(fault))
            history.append(f"lane {lane}, chain {chain}: {fault}: exit {rc}, last checkpoint step {after}")
        if not run_complete(run):  # finish the chain
            argv = ["train", "--resume", str(run), "--no-progress"] if (run / "config.yaml").is_file() else fresh_argv
            from faults import hgltr

            res = hgltr(argv, env=env)
            assert res.returncode == 0, res.stderr
        problems = compare_to_reference(run, reference_run)
        for p in problems:
            TALLY.lost(f"lane {lane}, chain {chain}: {p}")
        assert not problems, "\n".join(problems + ["faults:"] + history)
        # a write cut by kill -9 leaves its temporary folder; the next write of the run must remove it
        leftovers = [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        assert not leftovers, f"temporary files left in checkpoints/ after the run finished: {leftovers}\n" + "\n".join(history)


def test_random_kills_resume_to_the_uninterrupted_result(suite_data, reference_run, tmp_path, rel_cache):
    from concurrent.futures import ThreadPoolExecutor

    faults = plan(SEED, N_FAULTS)
    assert len(faults) == N_FAULTS >= 5
    assert {f.phase for f in faults} >= set(PHASES[:min(N_FAULTS, len(PHASES))])
    assert {f.sig for f in faults} == set(SIGNALS)
    env = subprocess_env(HGLTR_CACHE_DIR=str(rel_cache), HGLTR_FAULT_PAUSE=str(PAUSE))
    lanes = [faults[i::LANES] for i in range(LANES)]
    histories: list[list[str]] = [[] for _ in lanes]
    with ThreadPoolExecutor(LANES) as pool:
        futures = [pool.submit(run_lane, i, lane, suite_data, reference_run, tmp_path, env, histories[i])
                   for i, lane in enumerate(lanes)]
        errors = [f.exception() for f in futures]
    print("\n".join(h for hist in histories for h in hist))
    for e in errors:
        if e is not None:
            raise e
    delivered = [h for hist in histories for h in hist if "not reached" not in h]
    assert len(delivered) == N_FAULTS, delivered


def test_crash_between_validation_and_its_checkpoint_after_an_end_of_epoch_stop(suite_data, reference_run, tmp_path,
                                                                                  monkeypatch):
    """SIGINT on the last step of epoch 1 (step-* checkpoint taken before validation), then a crash after the
    resumed run logged epoch 1's validation but before epoch-0001 was written, then a resume: epoch 1's
    validation must be logged once, and the run must still equal the uninterrupted one."""
    import os as _os

    from hgltr_cli.engine.loop import Trainer

    run = tmp_path / "run"
    real_micro, real_save = Trainer._micro_loss, Trainer.save

    def signal_on_last_step_of_epoch_1(self, *a, **k):
        if self.epoch == 0 and self.steps_in_epoch == self.steps_per_epoch - 1:
            _os.kill(_os.getpid(), signal.SIGINT)
        return real_micro(self, *a, **k)

    def crash_before_epoch_checkpoint(self, name, *a, **k):
        if name.startswith("epoch-"):
            raise RuntimeError("simulated kill -9 between validation and its checkpoint")
        return real_save(self, name, *a, **k)

    ok = False
    try:
        monkeypatch.setattr(Trainer, "_micro_loss", signal_on_last_step_of_epoch_1)
        res = invoke(train_args(suite_data / "data", suite_data / "hier.json", run))
        assert res.exit_code == 130, res.output
        assert index_of(run)["last"].startswith("step-")
        monkeypatch.setattr(Trainer, "_micro_loss", real_micro)
        monkeypatch.setattr(Trainer, "save", crash_before_epoch_checkpoint)
        res = invoke(["train", "--resume", run, "--no-progress"])
        assert res.exit_code != 0
        vals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in vals if r["event"] == "val"] == [1], "the crash came after validation"
        monkeypatch.setattr(Trainer, "save", real_save)
        res = invoke(["train", "--resume", run, "--no-progress"])
        assert res.exit_code == 0, res.output
        recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in recs if r["event"] == "val"] == [1, 2, 3, 4, 5], "validation logged twice"
        problems = compare_to_reference(run, reference_run)
        assert not problems, problems
        ok = True
    finally:
        TALLY.fault(ok, "SIGINT at an epoch's last step, then a crash between validation and its checkpoint")
        if not ok:
            TALLY.lost("metrics after a stop at an epoch's last step")
