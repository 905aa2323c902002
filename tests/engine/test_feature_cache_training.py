"""`train.feature_cache` in Trainer.fit (frozen image encoder): epoch 1 fills the cache, later epochs
skip the encoder; exact against recomputing, exact across resume (saved, damaged or lost cache);
`train.compile` compiles the image trunk in place."""
from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch

import engine_fakes as F
from hgltr_cli.engine import checkpoint as ckpt
from hgltr_cli.engine import feature_cache as fcache
from hgltr_cli.engine.loop import Interrupted, Trainer
from hgltr_cli.errors import HgltrError
from hgltr_cli.rundir import RunDir

# 48 samples, global batch 10 in 2 micro-batches of 5: 4 steps per epoch and 8 samples in the dropped
# tail, which the cache encodes at the end of epoch 1 (2 more encoder calls: 5 + 3 samples)
CFG = dict(batch_size=10, grad_accum=2, log_every=1)


def make(tmp_path=None, cache="on", transform=F.noisy, model_cls=F.FakeClipModel, parts=None, crash_after=None,
         **cfg):
    run = None
    if tmp_path is not None:
        run = RunDir(tmp_path)
        if not run.exists():
            run.create()
    kw = {**CFG, "feature_cache": cache, **cfg}
    tr = Trainer(F.make_cfg(**kw), parts or F.make_parts(transform=transform, model_cls=model_cls), run=run,
                 device="cpu", progress=False)
    tr.records = []
    real_log = tr.log
    tr.log = lambda rec: (tr.records.append(rec), real_log(rec))[1]
    tr.encoder_by_epoch = []  # encoder calls during each epoch's training (validation excluded)
    real_end = tr._end_epoch
    mark = {"n": 0}

    def end(epoch):
        tr.encoder_by_epoch.append(tr.model.encoder_calls - mark["n"])
        real_end(epoch)
        mark["n"] = tr.model.encoder_calls
        if crash_after == epoch + 1:
            raise SystemExit("killed")  # as if kill -9 landed right after this epoch's checkpoint

    tr._end_epoch = end
    return tr


def weights(tr):
    return tr.model.learnable_state_dict()


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def train_records(tr, epoch=None):
    keys = ("epoch", "step", "lr", "loss", "l_cls", "l_mse", "l_dis")
    return [{k: r[k] for k in keys} for r in tr.records
            if r["event"] == "train" and (epoch is None or r["epoch"] == epoch)]


_REFS: dict = {}


def reference(sampler="random"):
    """An uninterrupted cache-on run (noisy views), per sampler."""
    if sampler not in _REFS:
        tr = make(sampler=sampler)
        tr.fit()
        _REFS[sampler] = tr
    return _REFS[sampler]


@pytest.mark.parametrize("sampler", ["random", "class-balanced"])
def test_encoder_runs_only_in_epoch_one_and_epoch_one_matches_cache_off(sampler):
    on = reference(sampler)
    off = make(cache="off", sampler=sampler)
    off.fit()
    assert on.cache is not None and on.cache.complete() and off.cache is None
    assert on.encoder_by_epoch[0] >= 8 and on.encoder_by_epoch[1:] == [0, 0]  # no trunk forward in epochs >= 2
    assert off.encoder_by_epoch == [8, 8, 8]
    assert train_records(on, 1) == train_records(off, 1)  # bit-identical losses while filling
    assert [r for r in on.records if r["event"] == "val"][0]["val_top1"] == \
           [r for r in off.records if r["event"] == "val"][0]["val_top1"]
    if sampler == "random":
        assert on.encoder_by_epoch[0] == 10  # 8 training micro-batches + the dropped tail (5 + 3)
    assert on.notes == []


def test_cache_equals_recomputing_the_same_views():
    """With views that do not change between epochs, cached z == the trunk run again: same weights."""
    on = make(transform=F.ident)
    on.fit()
    off = make(cache="off", transform=F.ident)
    off.fit()
    assert on.encoder_by_epoch[1:] == [0, 0]
    ra, rb = train_records(on), train_records(off)
    assert len(ra) == len(rb) == 12
    for x, y in zip(ra, rb):
        assert x == pytest.approx(y, rel=1e-6, abs=1e-7)
    a, b = weights(on), weights(off)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("damage", ["intact", "damaged", "missing"])
def test_resume_after_epoch_one_equals_uninterrupted(tmp_path, damage):
    tr = make(tmp_path, crash_after=1)
    with pytest.raises(SystemExit):
        tr.fit()
    cache_dir = tmp_path / fcache.CACHE_DIR
    assert (cache_dir / fcache.FEATURES_FILE).is_file() and (cache_dir / fcache.META_FILE).is_file()
    if damage == "damaged":
        raw = bytearray((cache_dir / fcache.FEATURES_FILE).read_bytes())
        raw[-3] ^= 0xFF
        (cache_dir / fcache.FEATURES_FILE).write_bytes(bytes(raw))
    elif damage == "missing":
        (cache_dir / fcache.FEATURES_FILE).unlink()
    tr2 = make(tmp_path)
    tr2.load(ckpt.load_checkpoint(tmp_path / "checkpoints", "last"))
    assert (tr2.epoch, tr2.steps_in_epoch) == (1, 0)
    tr2.fit()
    assert_same(weights(tr2), weights(reference()))  # a lost cache is rebuilt from the same epoch-1 views
    if damage == "intact":
        assert tr2.notes == [] and tr2.model.encoder_calls == 2 * 2  # validation only (2 epochs x 2 batches)
    else:
        assert len(tr2.notes) == 1 and "recomputing" in tr2.notes[0]
        assert ("sha256" if damage == "damaged" else "no saved feature cache") in tr2.notes[0]
        assert fcache.load_cache(cache_dir, tr2._cache_key())[0] is not None  # rewritten


@pytest.mark.parametrize("sampler", ["random", "class-balanced"])
def test_sigint_mid_epoch_one_resumes_exactly(tmp_path, sampler):
    calls = {"n": 0}

    def interrupting(x):
        calls["n"] += 1
        if calls["n"] == 10 * 2 + 3:  # inside epoch 1's third step
            os.kill(os.getpid(), signal.SIGINT)
        return F.noisy(x)

    tr = make(tmp_path, transform=interrupting, sampler=sampler)
    with pytest.raises(Interrupted) as info:
        tr.fit()
    assert info.value.step == 3
    assert not (tmp_path / fcache.CACHE_DIR).exists()  # an incomplete cache is never saved
    tr2 = make(tmp_path, sampler=sampler)
    tr2.load(ckpt.load_checkpoint(tmp_path / "checkpoints", "last"))
    assert (tr2.epoch, tr2.steps_in_epoch) == (0, 3)
    tr2.fit()
    assert_same(weights(tr2), weights(reference(sampler)))  # the skipped batches are refilled bit for bit
    assert tr2.encoder_by_epoch[1:] == [0, 0]


def test_feature_cache_on_with_a_trained_encoder_is_a_clean_error():
    with pytest.raises(HgltrError) as info:
        make(model_cls=F.FakeModel)  # its adapter trains inside the image encoder
    assert "train.feature_cache=on" in info.value.message and "--peft none" in info.value.hint
    assert make(model_cls=F.FakeModel, cache="auto").cache is None  # auto: quietly off


def test_feature_cache_on_under_ddp_is_a_clean_error():
    from hgltr_cli.engine.distributed import DistContext

    with pytest.raises(HgltrError, match="one process"):
        Trainer(F.make_cfg(batch_size=8, feature_cache="on"), F.make_parts(model_cls=F.FakeClipModel),
                ctx=DistContext(rank=0, world_size=2), device="cpu", progress=False)


def test_bad_image_in_epoch_one_turns_auto_off(tmp_path):
    from hgltr_cli.data.images import BadImageError, BadImageReport

    def parts():
        p = F.make_parts(model_cls=F.FakeClipModel)
        real = p.train_split.load

        def load(i, draft_size=None):
            if i == 30:
                raise BadImageError(f"fake#{i}", "broken")
            return real(i, draft_size)

        p.train_split.load = load
        p.skip_bad_images, p.bad_report = True, BadImageReport()
        return p

    auto = make(tmp_path, cache="auto", parts=parts())
    auto.fit()
    assert auto.cache is None and any("bad image" in n for n in auto.notes)
    assert not (tmp_path / fcache.CACHE_DIR).exists()
    assert ckpt.load_checkpoint(tmp_path / "checkpoints", "last")["state"]["feature_cache"] is False
    off = make(cache="off", parts=parts())
    off.fit()
    assert_same(weights(auto), weights(off))


@pytest.mark.parametrize("given,expected", [("auto", "auto"), ("on", "on"), ("off", "off"), ("true", "on"),
                                            ("false", "off")])
def test_feature_cache_config_key(given, expected):
    from hgltr_cli.config import parse_set, resolve
    from hgltr_cli.errors import ConfigError
    from hgltr_cli.settings import TrainConfig

    assert resolve(TrainConfig, [parse_set(f"train.feature_cache={given}")]).train.feature_cache == expected
    with pytest.raises(ConfigError, match="feature_cache"):
        resolve(TrainConfig, [parse_set("train.feature_cache=sometimes")])


# ------------------------------------------------------------------ train.compile

@pytest.fixture(scope="module")
def tiny_cfg():
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig

    return lambda compile_: resolve(TrainConfig, [{
        "model": {"name": "hgltr-tiny-vit", "pretrained": "none"}, "peft": {"name": "adapter"},
        "train": {"batch_size": 8, "device": "cpu", "precision": "fp32", "compile": compile_},
        "dataset": {"few_below": 8}}])


@pytest.mark.parametrize("compile_", [True, False])
def test_compile_compiles_the_image_trunk_in_place(monkeypatch, tiny_cfg, compile_, fresh_plugins):
    from hgltr_cli.engine.loop import TrainParts
    from hgltr_cli.model import build_model

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    cfg = tiny_cfg(compile_)
    model = build_model(cfg, ["cat", "dog", "oak", "pine"], "cpu", encode_text=False)
    keys = set(model.learnable_state_dict())
    parts = TrainParts(model=model, loss_fn=torch.nn.CrossEntropyLoss(), S=F.similarity(),
                       nontail=torch.tensor([True, True, False, False]), train_split=F.FakeSplit(F.COUNTS),
                       train_transform=F.ident)
    tr = Trainer(cfg, parts, device="cpu", progress=False)
    if compile_:
        assert len(compiled) == 1 and compiled[0] is model.clip.visual.transformer  # what encode_image calls
        assert tr.compiled is compiled[0]
    else:
        assert compiled == [] and tr.compiled is None
    assert set(tr.model.learnable_state_dict()) == keys


def test_image_trunk_of_other_models():
    from hgltr_cli.engine.loop import image_trunk

    clip = F.FakeClipModel()
    assert image_trunk(clip) is clip.clip.visual
    plain = F.FakeModel()
    assert image_trunk(plain) is plain
    vit = SimpleNamespace(clip=SimpleNamespace(visual=SimpleNamespace(transformer=torch.nn.Linear(1, 1))),
                          feature_mode="timm-linear")
    assert image_trunk(vit) is vit.clip.visual
