"""`hgltr train` end to end: config -> data, hierarchy, model, loss -> run dir -> Trainer.

Rank 0 writes the run dir; every rank builds the same model (seeded) and data view.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hgltr_cli.errors import HgltrError


def _component_options(cfg, section: str, comp):
    opts = cfg.options.get(section) if hasattr(cfg, "options") else None
    return opts if opts is not None else comp.default_config()


def build_parts(cfg, *, plugins, hierarchy=None, device="cpu"):
    """(parts, hierarchy, source) for the Trainer, from a resolved TrainConfig."""
    from hgltr_cli.data.transforms import eval_transform, train_transform
    from hgltr_cli.engine.loop import TrainParts
    from hgltr_cli.engine.runtime import seed_everything
    from hgltr_cli.hierarchy import load_hierarchy
    from hgltr_cli.model import build_model

    ds_comp = plugins.get("datasets", cfg.dataset.name)
    source = ds_comp.factory(cfg.dataset, _component_options(cfg, "dataset", ds_comp))
    counts = list(source.train_counts)
    groups = source.groups_for(cfg.dataset)
    if hierarchy is None:
        if not cfg.hierarchy.file:
            raise HgltrError("`hgltr train` needs a class hierarchy.",
                             "Pass --hierarchy FILE (make one with `hgltr build-hierarchy`).")
        hierarchy = load_hierarchy(cfg.hierarchy.file)
    hierarchy = hierarchy.align(source.class_names)
    S = hierarchy.similarity(cfg.hierarchy.tau_s, kind=cfg.hierarchy.distance)
    seed_everything(cfg.train.seed)  # restore() rebuilds a random-init backbone the same way
    model = build_model(cfg, hierarchy, "cpu", plugins=plugins)
    loss_comp = plugins.get("losses", cfg.loss.name)
    loss_fn = loss_comp.factory(_component_options(cfg, "loss", loss_comp), counts)
    info = model.preprocess_info()
    size = cfg.dataset.image_size or int(info["image_size"][0])
    mean, std = tuple(info["mean"]), tuple(info["std"])
    val = source.split("val") if source.has_split("val") else None
    from hgltr_cli.data.images import BadImageReport

    parts = TrainParts(model=model, loss_fn=loss_fn, S=S, nontail=torch.tensor([g != "few" for g in groups]),
                       train_split=source.split("train"), train_transform=train_transform(size, mean, std),
                       val_split=val, eval_transform=eval_transform(size, mean, std), class_counts=counts,
                       groups=groups, skip_bad_images=cfg.dataset.skip_bad_images, bad_report=BadImageReport())
    return parts, hierarchy, source


def run_train(cfg, output: str | None, *, resume: bool = False, plugins=None, console=None,
              progress: bool = True) -> dict[str, Any]:
    """Train (or continue) the run in `output`; returns a summary dict. Raises HgltrError / Interrupted."""
    from hgltr_cli.engine import checkpoint as ckpt
    from hgltr_cli.engine.distributed import init_distributed
    from hgltr_cli.engine.loop import Trainer, use_feature_cache
    from hgltr_cli.engine.runtime import resolve_device, resolve_precision
    from hgltr_cli.rundir import RunDir, backbone_fingerprint, environment

    if plugins is None:
        from hgltr_cli.plugins import get_plugins
        plugins = get_plugins()
    if not output:
        raise HgltrError("no run directory given.", "Pass --output RUN_DIR (or --set train.output=RUN_DIR).")
    kind = "cuda" if (cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())) else "cpu"
    ctx = init_distributed(kind)
    trainer = None
    try:
        device = resolve_device(cfg.train.device, ctx.local_rank)
        precision = resolve_precision(cfg.train.precision, device)
        run = RunDir(output)
        # a run killed before its hierarchy.json was written falls back to the configured file
        hierarchy = run.load_hierarchy() if resume and run.hierarchy.is_file() else None
        parts, hierarchy, source = build_parts(cfg, plugins=plugins, hierarchy=hierarchy)
        use_feature_cache(cfg, parts.model, ctx.enabled)  # a refused setting stops before anything is written
        fingerprint = backbone_fingerprint(parts.model)
        loaded = None
        if resume and run.has_checkpoint():
            loaded, damaged = ckpt.load_latest_good(run.checkpoints, device="cpu")
            if damaged and ctx.is_main and console is not None:
                for line in damaged:
                    console.print(f"warning: skipping a damaged checkpoint: {line}", markup=False, soft_wrap=True)
                console.print(f"resuming from the previous good checkpoint {loaded['dir'].name} "
                              f"(epoch {loaded['state']['epoch']}, step {loaded['state']['step']}).",
                              markup=False, soft_wrap=True)
            env = run.read_env()
            if env.get("backbone_sha256") and env["backbone_sha256"] != fingerprint:
                raise HgltrError(f"the backbone rebuilt for {str(run.path)!r} differs from the one it trained with.",
                                 "Make the same weights available (same file or tag, same open_clip version).")
        if ctx.is_main:
            try:  # a full disk at start-up (resume on a full volume) is a clean error too
                if not resume:
                    run.create()
                    run.write_config(cfg)
                if not run.hierarchy.is_file():
                    run.write_hierarchy(hierarchy)
                try:
                    previous = run.read_env() if resume else {}
                except ValueError:  # a damaged env.json is rewritten
                    previous = {}
                history = list(previous.get("previous_launches", []))
                if resume:  # env.json describes this launch; earlier launches are listed
                    history.append({"created": previous.get("created"), "command": previous.get("command"),
                                    "world_size": previous.get("world_size"), "device": previous.get("device")})
                run.write_env(environment(cfg.train.seed, device=str(device), precision=precision,
                                          world_size=ctx.world_size, plugins=plugins,
                                          extra={"backbone_sha256": fingerprint, "dataset": source.summary(cfg.dataset),
                                                 **({"previous_launches": history} if history else {}),
                                                 "class_names": source.class_names}))
                run.trim_metrics(loaded["state"]["step"] if loaded else 0)
            except OSError as exc:
                raise run.write_error(exc, run.path) from None
        ctx.barrier()
        trainer = Trainer(cfg, parts, run=run, ctx=ctx, device=device, precision=precision, console=console,
                          progress=progress)
        if loaded is not None:
            trainer.load(loaded)
            if trainer.epoch >= cfg.train.epochs:
                return {"run_dir": str(run.path), "is_main": ctx.is_main, "already_complete": True, "epochs": trainer.epoch,
                        "step": trainer.step, "best_metric": trainer.best_metric, "best_epoch": trainer.best_epoch}
        if ctx.is_main and console is not None:
            console.print(f"[bold]hgltr train[/] {cfg.dataset.name}: {len(source.class_names)} classes, "
                          f"{len(parts.train_split)} train / {len(parts.val_split) if parts.val_split else 0} val images; "
                          f"{cfg.model.name} + {cfg.peft.name}, loss {cfg.loss.name}, {device} {precision}"
                          + (f", {ctx.world_size} processes" if ctx.enabled else "")
                          + (f"; resuming at epoch {trainer.epoch + 1}, step {trainer.step}" if loaded else ""), soft_wrap=True)
        result = trainer.fit()
        report = parts.bad_report
        if ctx.is_main:
            done = {"event": "done", "epoch": trainer.epoch, "step": trainer.step, "best_metric": trainer.best_metric,
                    "best_epoch": trainer.best_epoch}
            if report:
                done["bad_images_skipped"] = report.count
                done["bad_images"] = report.lines()
            run.log(done)
        return {"run_dir": str(run.path), "is_main": ctx.is_main, **result, "bad_images": report.lines() if report else []}
    finally:
        if trainer is not None:
            trainer.close()
        ctx.close()
