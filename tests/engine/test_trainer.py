"""The loop's guarantees on fakes: exact resume (epoch end, mid-epoch signal), accumulation,
NaN/Inf stops, checksums, full disks, validation-selected best, two-process gloo DDP."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket

import pytest
import torch

import engine_fakes as F
from hgltr_cli.engine import checkpoint as ckpt
from hgltr_cli.engine.loop import Interrupted, NonFiniteLoss, Trainer
from hgltr_cli.errors import HgltrError
from hgltr_cli.rundir import RunDir


def trainer(tmp_path=None, parts=None, **cfg):
    run = RunDir(tmp_path).create() if tmp_path is not None else None
    return Trainer(F.make_cfg(**cfg), parts or F.make_parts(), run=run, device="cpu", progress=False)


def weights(tr):
    return tr.model.learnable_state_dict()


def assert_same(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def reference():
    tr = trainer()
    tr.fit()
    return weights(tr)


def test_training_changes_only_learnable_weights(reference):
    fresh = F.FakeModel()
    assert any(not torch.equal(reference[k], v) for k, v in fresh.learnable_state_dict().items())
    assert "frozen.weight" not in reference


def test_same_seed_same_weights(reference):
    tr = trainer()
    tr.fit()
    assert_same(weights(tr), reference)


def test_resume_after_epoch_one_equals_uninterrupted(tmp_path, reference, monkeypatch):
    tr = trainer(tmp_path)
    real_end = Trainer._end_epoch

    def crash_after_first(self, epoch):
        real_end(self, epoch)
        raise SystemExit("killed")  # as if kill -9 landed right after the epoch-1 checkpoint

    monkeypatch.setattr(Trainer, "_end_epoch", crash_after_first)
    with pytest.raises(SystemExit):
        tr.fit()
    monkeypatch.undo()
    assert ckpt.read_index(tmp_path / "checkpoints")["last"] == "epoch-0001"
    tr2 = Trainer(F.make_cfg(), F.make_parts(model_seed=0), run=RunDir(tmp_path), device="cpu", progress=False)
    tr2.load(ckpt.load_checkpoint(tmp_path / "checkpoints", "last"))
    assert (tr2.epoch, tr2.steps_in_epoch) == (1, 0)
    tr2.fit()
    assert_same(weights(tr2), reference)


def test_sigint_mid_epoch_writes_resumable_checkpoint(tmp_path, reference):
    calls = {"n": 0}

    def interrupting(x):
        calls["n"] += 1
        if calls["n"] == 8 * 4 + 3:  # inside epoch 1's fifth step (8 images per step, 6 steps per epoch)
            os.kill(os.getpid(), signal.SIGINT)
        return F.noisy(x)

    tr = trainer(tmp_path, parts=F.make_parts(transform=interrupting))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest was started in the background
    with pytest.raises(Interrupted) as info:
        tr.fit()
    assert info.value.signame == "SIGINT" and info.value.step == 5
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    index = ckpt.read_index(tmp_path / "checkpoints")
    assert index["last"] == "step-0000005"
    events = [json.loads(line)["event"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events[-1] == "interrupted"
    tr2 = trainer(None)
    tr2.run = RunDir(tmp_path)
    tr2.load(ckpt.load_checkpoint(tmp_path / "checkpoints", "last"))
    assert (tr2.epoch, tr2.steps_in_epoch, tr2.step) == (0, 5, 5)
    tr2.fit()
    assert_same(weights(tr2), reference)


def test_grad_accumulation_matches_full_batch(reference):
    tr = trainer(grad_accum=4)
    assert tr.layout.micro == 2
    tr.fit()
    assert_same(weights(tr), reference, exact=False)


def test_batch_not_divisible_is_a_clear_error():
    with pytest.raises(HgltrError, match="multiple of"):
        trainer(grad_accum=3)


def test_nan_loss_stops_naming_step_and_term_keeping_last_checkpoint(tmp_path):
    class NanAfter(torch.nn.Module):
        def __init__(self, at):
            super().__init__()
            self.calls, self.at = 0, at

        def forward(self, logits, y):
            self.calls += 1
            loss = torch.nn.functional.cross_entropy(logits, y)
            return loss * float("nan") if self.calls >= self.at else loss

    tr = trainer(tmp_path, parts=F.make_parts(loss_fn=NanAfter(6 + 3)))  # 6 steps/epoch: step 9 = epoch 2
    with pytest.raises(NonFiniteLoss) as info:
        tr.fit()
    msg = info.value.message
    assert "l_cls" in msg and "step 9" in msg and "epoch-0001" in msg
    loaded = ckpt.load_checkpoint(tmp_path / "checkpoints", "last")  # still intact and verified
    assert loaded["state"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in loaded["model"].values())


def test_nan_in_feature_term_is_named(tmp_path):
    parts = F.make_parts()
    parts.model.text.fill_(float("nan"))
    tr = trainer(tmp_path, parts=parts)
    with pytest.raises(NonFiniteLoss, match="l_mse became NaN/Inf at step 1 "):
        tr.fit()
    assert not ckpt.read_index(tmp_path / "checkpoints")


def test_checksum_mismatch_is_refused(tmp_path):
    tr = trainer(tmp_path, epochs=1)
    tr.fit()
    f = tmp_path / "checkpoints" / "epoch-0001" / ckpt.MODEL_FILE
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match="sha256"):
        ckpt.load_checkpoint(tmp_path / "checkpoints", "last")
    state = tmp_path / "checkpoints" / "epoch-0001" / ckpt.STATE_FILE
    state.write_text(state.read_text().replace('"step": 6', '"step": 7'))
    with pytest.raises(ckpt.CheckpointError, match="checksum"):
        ckpt.load_checkpoint(tmp_path / "checkpoints", "last")


def test_full_disk_fails_cleanly_and_keeps_previous(tmp_path, monkeypatch):
    tr = trainer(tmp_path, epochs=2)
    import safetensors.torch as st

    real = st.save_file
    calls = {"n": 0}

    def full_on_third(*a, **k):  # epoch 1 writes 2 files; the third write (epoch 2) hits a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)

    monkeypatch.setattr(st, "save_file", full_on_third)
    with pytest.raises(HgltrError, match="disk is full.*epoch-0001.*intact"):
        tr.fit()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["epoch-0001", "index.json"]  # no half-written folder left behind
    assert ckpt.load_checkpoint(tmp_path / "checkpoints", "last")["state"]["epoch"] == 1


def test_write_errors_share_one_wording_and_point_to_resume(tmp_path):
    """Checkpoint and metrics writes fail with the same message; with config.yaml written, a full disk
    before the first checkpoint still says --resume (a fresh start into that folder is refused)."""
    from hgltr_cli.rundir import write_error

    run = RunDir(tmp_path / "run").create()
    run.config.write_text("train: {}\n", encoding="utf-8")
    full = OSError(errno.ENOSPC, "No space left on device")
    err = run.write_error(full, run.metrics)
    assert "disk is full" in err.message and "No checkpoint was written yet" in err.message
    assert f"hgltr train --resume {run.path}" in err.hint
    err = ckpt.disk_error(full, run.checkpoints / "epoch-0002", "epoch-0001")
    assert "a checkpoint under" in err.message and "The previous checkpoint 'epoch-0001' is intact" in err.message
    assert f"hgltr train --resume {run.path}" in err.hint
    assert "start the run again" in write_error(full, "'x'", tmp_path / "no-run", None).hint
    denied = write_error(OSError(errno.EACCES, "Permission denied"), "'x'", run.path, None)
    assert "Permission denied" in denied.message and "permissions" in denied.hint


def test_validation_selects_best_checkpoint(tmp_path, monkeypatch):
    scores = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr(Trainer, "validate", lambda self: {"val_top1": next(scores)})
    tr = trainer(tmp_path)
    tr.fit()
    index = ckpt.read_index(tmp_path / "checkpoints")
    assert index["best"] == "epoch-0002" and index["last"] == "epoch-0003" and index["best_metric"] == 0.9
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["epoch-0002", "epoch-0003", "index.json"]
    vals = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [v["best"] for v in vals if v["event"] == "val"] == [True, True, False]


def test_validate_counts_the_validation_split(reference):
    parts = F.make_parts()
    tr = Trainer(F.make_cfg(), parts, device="cpu", progress=False)
    tr.model.load_learnable_state_dict(reference)
    got = tr.validate()
    with torch.no_grad():
        x = torch.stack([parts.val_split.x[i] for i in range(len(parts.val_split))])
        pred = parts.model(x)[0].argmax(1)
    y = torch.as_tensor(parts.val_split.labels)
    assert got["val_top1"] == pytest.approx((pred == y).float().mean().item())
    assert got["val_samples"] == len(y)
    assert parts.train_split.loads == 0  # validation never reads training (or any other) split


def test_metrics_jsonl_fields(tmp_path):
    tr = trainer(tmp_path, epochs=1)
    tr.fit()
    recs = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["event"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("epoch", "lr", "loss", "l_cls", "l_mse", "l_dis", "images_per_s"):
        assert key in train[0]
    r = train[0]
    assert r["loss"] == pytest.approx(r["l_cls"] + 0.5 * r["l_mse"] + 0.3 * r["l_dis"])
    assert r["l_mse"] > 0 and r["l_dis"] > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("accum", [2])  # accumulation under DDP (no_sync); torchrun covers accum 1
def test_two_process_gloo_ddp_matches_one_process(tmp_path, reference, accum):
    import torch.multiprocessing as mp

    out = tmp_path / "ddp.pt"
    for attempt in range(3):  # other test runs on this machine may grab the free port first
        try:
            mp.start_processes(F.ddp_worker, args=(2, _free_port(), str(out), {"grad_accum": accum}), nprocs=2,
                               join=True, start_method="spawn")
            break
        except mp.ProcessRaisedException as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    got = torch.load(out, weights_only=True)
    assert_same(got["sd"], reference, exact=False)
    single = Trainer(F.make_cfg(), F.make_parts(), device="cpu", progress=False)
    single.model.load_learnable_state_dict(reference)
    assert got["val"]["val_top1"] == pytest.approx(single.validate()["val_top1"])


def test_signal_during_validation_stops_after_the_epoch_checkpoint(tmp_path, reference, monkeypatch):
    real_validate = Trainer.validate

    def validate_and_signal(self):
        os.kill(os.getpid(), signal.SIGTERM)
        return real_validate(self)

    monkeypatch.setattr(Trainer, "validate", validate_and_signal)
    tr = trainer(tmp_path)
    with pytest.raises(Interrupted) as info:
        tr.fit()
    monkeypatch.undo()
    assert info.value.signame == "SIGTERM" and info.value.step == 6
    index = ckpt.read_index(tmp_path / "checkpoints")
    assert index["last"] == "step-0000006" and index["entries"]["step-0000006"]["epoch"] == 1
    tr2 = trainer(None)
    tr2.load(ckpt.load_checkpoint(tmp_path / "checkpoints", "last"))
    tr2.fit()
    assert_same(weights(tr2), reference)


def test_adamw_with_warmup_resumes_exactly(tmp_path, monkeypatch):
    cfg = dict(optimizer="adamw", lr=0.01, weight_decay=0.05, warmup_epochs=1.0, epochs=2)
    ref = trainer(**cfg)
    ref.fit()
    tr = trainer(tmp_path, **cfg)
    real_end = Trainer._end_epoch

    def crash(self, epoch):
        real_end(self, epoch)
        raise SystemExit

    monkeypatch.setattr(Trainer, "_end_epoch", crash)
    with pytest.raises(SystemExit):
        tr.fit()
    monkeypatch.undo()
    tr2 = trainer(None, **cfg)
    tr2.load(ckpt.load_checkpoint(tmp_path / "checkpoints", "last"))
    assert tr2.schedule.t == 6 and tr2.optimizer.state_dict()["state"]  # AdamW moments came back
    tr2.fit()
    assert_same(weights(tr2), weights(ref))


def test_cosine_schedule_with_warmup():
    import math

    from hgltr_cli.engine.optim import CosineSchedule

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.2)
    sch = CosineSchedule(opt, total_steps=10, warmup_steps=4)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(10):
        sch.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen[:4] == pytest.approx([0.05, 0.1, 0.15, 0.2])
    assert seen[4 + 3] == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 3 / 6)))
    assert seen[10] == pytest.approx(0.0, abs=1e-12)
    sch2 = CosineSchedule(torch.optim.SGD([p], lr=0.2), total_steps=10, warmup_steps=4)
    sch2.load_state_dict(json.loads(json.dumps(sch.state_dict())))
    assert sch2.get_last_lr() == sch.get_last_lr()


@pytest.mark.parametrize("sampler", ["random", "class-balanced"])
def test_every_layout_feeds_the_same_samples_per_step(sampler):
    """world x accum splits of the global batch cover exactly the one-process step; denominators match."""
    from hgltr_cli.engine.feed import Layout, global_order_for, step_counts, train_loader

    split = F.FakeSplit(F.COUNTS)
    order = global_order_for(split, 5, 2, sampler)
    B = 8
    steps = len(split) // B
    want = [sorted(order[t * B:(t + 1) * B].tolist()) for t in range(steps)]
    for world, accum in ((1, 1), (2, 1), (2, 2), (1, 4)):
        lay = Layout(B, world, accum).check()
        got = [[] for _ in range(steps)]
        for rank in range(world):
            loader = train_loader(split, F.ident, lay, rank, 5, 2, 0, sampler)
            idx = [i for i, _seed in loader.sampler.indices()]
            per_step = accum * lay.micro
            for t in range(steps):
                got[t] += idx[t * per_step:(t + 1) * per_step]
        assert [sorted(g) for g in got] == want, (world, accum)
    nt = torch.tensor([c >= 8 for c in F.COUNTS])
    counts = step_counts(order, split.labels, nt, B)
    assert counts.tolist() == [int(nt[split.labels[w]].sum()) for w in want]
    lay = Layout(B, 2, 2)
    late = train_loader(split, F.ident, lay, 1, 5, 2, 3 * 2, sampler).sampler.indices()  # resume at step 3
    full = train_loader(split, F.ident, lay, 1, 5, 2, 0, sampler).sampler.indices()
    assert late == full[3 * 2 * lay.micro:]


def test_next_write_removes_leftovers_of_a_killed_write(tmp_path):
    tr = trainer(tmp_path, epochs=1)
    root = tmp_path / "checkpoints"
    (root / ".tmp-epoch-0001-99999").mkdir(parents=True)  # a folder left by a write killed with -9
    (root / ".tmp-epoch-0001-99999" / ckpt.MODEL_FILE).write_bytes(b"partial")
    (root / ".index.json.tmp-99999").write_text("{")
    tr.fit()
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0001", "index.json"]


def test_index_cannot_name_a_folder_outside_the_run(tmp_path):
    tr = trainer(tmp_path, epochs=1)
    tr.fit()
    root = tmp_path / "checkpoints"
    idx = json.loads((root / "index.json").read_text())
    idx["entries"]["../../x"] = idx["entries"][idx["last"]]
    idx["last"] = "../../x"
    (root / "index.json").write_text(json.dumps(idx))
    with pytest.raises(ckpt.CheckpointError, match="index.json.*not a folder inside checkpoints"):
        ckpt.load_checkpoint(root, "last")


def test_non_safetensors_weights_are_refused_even_with_matching_checksums(tmp_path):
    import hashlib

    tr = trainer(tmp_path, epochs=1)
    tr.fit()
    d = tmp_path / "checkpoints" / "epoch-0001"
    (d / ckpt.MODEL_FILE).write_bytes(b"\x80\x04not a safetensors file")  # a forged file, checksums re-sealed
    state = json.loads((d / ckpt.STATE_FILE).read_text())
    state["files"][ckpt.MODEL_FILE] = hashlib.sha256((d / ckpt.MODEL_FILE).read_bytes()).hexdigest()
    raw = json.dumps(state).encode()
    (d / ckpt.STATE_FILE).write_bytes(raw)
    idx = json.loads((tmp_path / "checkpoints" / "index.json").read_text())
    idx["entries"]["epoch-0001"]["state_sha256"] = hashlib.sha256(raw).hexdigest()
    (tmp_path / "checkpoints" / "index.json").write_text(json.dumps(idx))
    with pytest.raises(ckpt.CheckpointError, match="model.safetensors.*not a valid safetensors file"):
        ckpt.load_checkpoint(tmp_path / "checkpoints", "last")
