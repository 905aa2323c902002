"""Damaged checkpoints and full disks: detected with a clear error, the previous good checkpoint kept and used.

- a flipped byte or a truncated file in the newest checkpoint fails its sha256 on load (eval names the file);
  `hgltr train --resume` passes over it to the previous good checkpoint and still ends equal to the
  uninterrupted run;
- a full disk (a real size-limited tmpfs where the sandbox allows mounting one; else ENOSPC injected
  into the writer) stops training with a clean message, leaves the previous checkpoint loadable, and
  after space is freed the run resumes to the uninterrupted result.
"""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from faults import invoke, TALLY, index_of, one_line, same_tensors, snapshot, train_args, weights


def clean_failure(res) -> str:
    assert res.exit_code != 0, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), (
        f"unhandled {type(res.exception).__name__}: {res.exception}\n{res.output}")
    assert "Traceback" not in res.output
    return one_line(res.output)


@pytest.fixture
def run_copy(reference_run, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(reference_run, dst, ignore=shutil.ignore_patterns("eval"))
    return dst


def flip_byte(p: Path, offset: int | None = None) -> None:
    data = bytearray(p.read_bytes())
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0x01
    p.write_bytes(bytes(data))


def truncate(p: Path) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) * 2 // 3])


DAMAGE = {
    "flipped byte in model.safetensors": ("model.safetensors", flip_byte),
    "truncated model.safetensors": ("model.safetensors", truncate),
    "flipped byte in optimizer.safetensors": ("optimizer.safetensors", flip_byte),
    "truncated trainer_state.json": ("trainer_state.json", truncate),
    "edited trainer_state.json": ("trainer_state.json", lambda p: p.write_text(p.read_text().replace('"step"', '"step" ', 1))),
    "deleted optimizer.safetensors": ("optimizer.safetensors", lambda p: p.unlink()),
}


@pytest.mark.parametrize("what", list(DAMAGE))
def test_damaged_newest_checkpoint_is_detected_and_the_previous_one_used(run_copy, reference_run, what):
    fname, damage = DAMAGE[what]
    idx = index_of(run_copy)
    last, older = idx["last"], sorted(set(idx["entries"]) - {idx["last"]})
    assert older, "the checkpoint before `last` must be kept as a fallback"
    target = run_copy / "checkpoints" / last / fname
    damage(target)
    untouched = {k: v for k, v in snapshot(run_copy).items() if not k.startswith(last + "/") and k != "index.json"}
    ok = False
    try:
        if fname == "model.safetensors":  # eval reads the weights: it must refuse them, naming the file
            text = clean_failure(invoke(["eval", run_copy, "--checkpoint", "last", "--no-progress"]))
            assert str(target) in text and "checksum" in text, text
        res = invoke(["train", "--resume", run_copy, "--no-progress"])
        assert res.exit_code == 0, res.output
        text = one_line(res.output)
        assert last in text and "damaged" in text.lower(), text  # says what it passed over
        assert same_tensors(weights(run_copy), weights(reference_run)), "resumed run differs from the reference"
        after = snapshot(run_copy)
        for k, v in untouched.items():  # nothing of the older checkpoints was modified in the process
            assert after.get(k, v) == v, k
        ok = True
    finally:
        TALLY.fault(ok, f"damaged checkpoint: {what}")
        if not ok:
            TALLY.lost(f"damaged checkpoint: {what}")


def test_damaged_index_is_a_clear_error(run_copy):
    (run_copy / "checkpoints" / "index.json").write_text('{"last": "epoch-00')
    text = clean_failure(invoke(["eval", run_copy, "--no-progress"]))
    assert "index.json" in text and "damaged" in text
    TALLY.bad_input(True, "damaged index.json")


# ---------------------------------------------------------------- full disk

def _fill(folder: Path) -> Path:
    """Write a filler file until the filesystem says ENOSPC."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    try:  # the last partial page too
        with open(filler, "ab") as f:
            while True:
                f.write(b"\0")
                f.flush()
    except OSError:
        pass
    return filler


@pytest.fixture
def tiny_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); the ENOSPC-injection test covers it")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_real_tmpfs_fails_cleanly_and_resumes(tiny_disk, suite_data, reference_run, monkeypatch):
    """The filesystem fills up right after epoch 2's checkpoint: the run stops cleanly; freeing space and
    resuming gives the uninterrupted result."""
    from hgltr_cli.engine import checkpoint as ck

    run = tiny_disk / "run"
    real = ck.save_checkpoint
    state = {"filler": None}

    def save_then_fill(root, name, **kw):
        out = real(root, name, **kw)
        if name == "epoch-0002" and state["filler"] is None:
            state["filler"] = _fill(tiny_disk)
        return out

    monkeypatch.setattr(ck, "save_checkpoint", save_then_fill)
    ok = False
    try:
        res = invoke(train_args(suite_data / "data", suite_data / "hier.json", run))
        text = clean_failure(res)
        assert state["filler"] is not None
        assert "disk is full" in text or "No space left" in text, text
        assert f"hgltr train --resume {run}" in text, text
        ck.load_checkpoint(run / "checkpoints", "last")  # the previous checkpoint is intact
        assert index_of(run)["last"] == "epoch-0002"
        monkeypatch.setattr(ck, "save_checkpoint", real)
        state["filler"].unlink()
        res = invoke(["train", "--resume", run, "--no-progress"])
        assert res.exit_code == 0, res.output
        assert same_tensors(weights(run), weights(reference_run))
        ok = True
    finally:
        TALLY.fault(ok, "full disk (tmpfs) after epoch 2")
        if not ok:
            TALLY.lost("full disk (tmpfs)")


@pytest.mark.parametrize("where", ["model.safetensors", "optimizer.safetensors", "index.json", "metrics.jsonl"])
def test_full_disk_injected_fails_cleanly_and_keeps_previous(suite_data, tmp_path, monkeypatch, where):
    """ENOSPC raised by the writer of one file, at epoch 3: clean stop, epoch 2 intact and resumable."""
    import builtins

    from hgltr_cli.engine import checkpoint as ck

    run = tmp_path / "run"
    armed = {"on": False, "hit": 0}
    real_save = ck.save_checkpoint
    real_open = builtins.open

    def save(root, name, **kw):
        armed["on"] = name == "epoch-0003"
        try:
            return real_save(root, name, **kw)
        finally:
            armed["on"] = False

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    def guarded_open(file, mode="r", *a, **k):
        name = os.path.basename(str(file))
        if armed["on"] and "w" in mode and (name == where or name.startswith(f".{where}.tmp")):
            armed["hit"] += 1
            full()
        if where == "metrics.jsonl" and name == where and "a" in mode and armed.get("log"):
            armed["hit"] += 1
            full()
        return real_open(file, mode, *a, **k)

    import safetensors.torch as st

    real_st = st.save_file

    def st_save(tensors, filename, *a, **k):
        if armed["on"] and os.path.basename(filename) == where:
            armed["hit"] += 1
            full()
        return real_st(tensors, filename, *a, **k)

    monkeypatch.setattr(ck, "save_checkpoint", save)
    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(st, "save_file", st_save)
    if where == "metrics.jsonl":  # the metrics log hits the full disk right after epoch 2's checkpoint
        def save_then_arm(root, name, **kw):
            out = real_save(root, name, **kw)
            armed["log"] = name == "epoch-0002"
            return out
        monkeypatch.setattr(ck, "save_checkpoint", save_then_arm)
    ok = False
    try:
        res = invoke(train_args(suite_data / "data", suite_data / "hier.json", run))
        monkeypatch.undo()
        assert armed["hit"], "the fault was never injected"
        text = clean_failure(res)
        assert "disk is full" in text or "No space left" in text, text
        idx = index_of(run)
        assert idx["last"] == "epoch-0002", idx
        ck.load_checkpoint(run / "checkpoints", "last")
        assert not [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
        ok = True
    finally:
        TALLY.fault(ok, f"ENOSPC writing {where}")
        if not ok:
            TALLY.lost(f"ENOSPC writing {where}")


def test_resume_onto_a_full_disk_is_a_clean_error(tiny_disk, reference_run):
    run = tiny_disk / "run"
    shutil.copytree(reference_run, run, ignore=shutil.ignore_patterns("eval"))
    filler = _fill(tiny_disk)
    ok = False
    try:
        before = snapshot(run)
        text = clean_failure(invoke(["train", "--resume", run, "--no-progress"]))
        assert "disk is full" in text, text
        assert snapshot(run) == before
        ok = True
    finally:
        filler.unlink()
        TALLY.fault(ok, "full disk when resuming")
