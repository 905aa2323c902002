"""`hgltr train`: resolve the config and hand it to the engine (or continue a run with --resume)."""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from hgltr_cli.commands.common import ConfigOpt, PrintConfigOpt, SetOpt, print_config_and_exit, resolve_config
from hgltr_cli.console import user_errors
from hgltr_cli.errors import HgltrError

# CLI flag -> config key: each flag is only a shorthand, so --print-config re-runs the same job.
SHORTHANDS = {
    "dataset": "dataset.name", "data_root": "dataset.root", "hierarchy": "hierarchy.file",
    "model": "model.name", "pretrained": "model.pretrained", "peft": "peft.name", "loss": "loss.name",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed", "output": "train.output",
}

EXIT_SIGNAL = {"SIGINT": 130, "SIGTERM": 143}


def dry_run_plan(cfg, plugins=None) -> dict:
    """What `--dry-run` reports: the model summary plus the optimisation plan, without data or training."""
    from hgltr_cli.engine.runtime import resolve_device, resolve_precision
    from hgltr_cli.model import model_summary

    summary = model_summary(cfg, plugins=plugins)
    t = cfg.train
    device = resolve_device(t.device)
    return {
        "model": summary,
        "loss": {"name": cfg.loss.name, "options": _asdict(cfg.options.get("loss"))},
        "hgltr": _asdict(cfg.hgltr),
        "train": {"epochs": t.epochs, "global_batch": t.batch_size, "grad_accum": t.grad_accum,
                  "optimizer": t.optimizer, "lr": t.lr, "momentum": t.momentum if t.optimizer == "sgd" else None,
                  "nesterov": t.nesterov if t.optimizer == "sgd" else None, "weight_decay": t.weight_decay,
                  "schedule": "cosine", "warmup_epochs": t.warmup_epochs, "sampler": t.sampler, "seed": t.seed,
                  "device": str(device), "precision": resolve_precision(t.precision, device)},
        "output": t.output,
    }


def _asdict(obj):
    import dataclasses

    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def register(app: typer.Typer) -> None:
    @app.command("train")
    @user_errors
    def train(
        dataset: Annotated[Optional[str], typer.Option(help="Dataset plugin (`hgltr list datasets`).")] = None,
        data_root: Annotated[Optional[str], typer.Option(help="Folder holding the dataset.")] = None,
        hierarchy: Annotated[Optional[str], typer.Option(help="Hierarchy file from `hgltr build-hierarchy`.")] = None,
        model: Annotated[Optional[str], typer.Option(help="open_clip architecture or `hgltr list models`.")] = None,
        pretrained: Annotated[Optional[str], typer.Option(help="Weights: a local file, an open_clip tag, or 'none'.")] = None,
        peft: Annotated[Optional[str], typer.Option(help="PEFT method (`hgltr list peft`).")] = None,
        loss: Annotated[Optional[str], typer.Option(help="Classification loss L_cls (`hgltr list losses`).")] = None,
        epochs: Annotated[Optional[int], typer.Option(help="Training epochs.")] = None,
        batch_size: Annotated[Optional[int], typer.Option(help="Global batch size (all processes together).")] = None,
        seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
        output: Annotated[Optional[str], typer.Option(help="Run directory to write.")] = None,
        preset: Annotated[Optional[str], typer.Option(
            help="The authors' settings for a benchmark: imagenet-lt, places-lt or inat2018.",
            rich_help_panel="Config")] = None,
        resume: Annotated[Optional[str], typer.Option(
            "--resume", metavar="RUN_DIR", help="Continue an interrupted run exactly where its last checkpoint "
                                                "stopped (needs nothing else).")] = None,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Build the model, print what would train, exit.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="With --dry-run: machine-readable output.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar (logs still written).")] = False,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        print_config: PrintConfigOpt = False,
    ):
        """Fine-tune CLIP with a PEFT method and the HGLTR losses; writes a run directory.

        Loss = L_cls (--loss, logit-adjusted by default) + alpha * L_mse + beta * L_dis (set with
        --set hgltr.alpha=... / hgltr.beta=...; 0 switches a term off). The best checkpoint is chosen
        on the validation split, never test. Ctrl-C writes a resumable checkpoint.

        Examples:

          hgltr train --dataset imagefolder --data-root DATA --hierarchy h.json --model ViT-B-16 --pretrained weights.safetensors --peft adapter --output runs/a

          hgltr train --preset imagenet-lt --data-root ImageNet --hierarchy taxonomies/imagenet1k.json --pretrained weights.safetensors --output runs/inlt

          hgltr train --resume runs/a

          hgltr train --dry-run --hierarchy h.json --model ViT-B-16 --pretrained none --peft lora

          hgltr train --peft lora --set peft.rank=16 --print-config > job.yaml
        """
        from hgltr_cli.settings import TrainConfig

        values = dict(dataset=dataset, data_root=data_root, hierarchy=hierarchy, model=model, pretrained=pretrained,
                      peft=peft, loss=loss, epochs=epochs, batch_size=batch_size, seed=seed, output=output)
        if as_json and not dry_run:
            raise HgltrError("--json only applies to --dry-run.",
                             "Add --dry-run, or drop --json (a run logs to RUN_DIR/metrics.jsonl).")
        if resume:
            given = [f"--{k.replace('_', '-')}" for k, v in values.items() if v is not None]
            given += [flag for flag, v in (("--config", config), ("--set", set_), ("--preset", preset)) if v]
            if given:
                raise HgltrError(f"--resume takes the run's own config; drop {', '.join(given)}.",
                                 "A resumed run continues exactly; to change settings, start a new run.")
            from hgltr_cli.rundir import open_run

            run = open_run(resume)
            resolved = run.load_config()
            out_dir = str(run.path)
        else:
            from hgltr_cli.presets import get_preset

            resolved = resolve_config(TrainConfig, config=config, sets=set_, preset=get_preset(preset),
                                      shorthands={SHORTHANDS[k]: v for k, v in values.items()})
            out_dir = resolved.train.output
        if print_config:
            print_config_and_exit(resolved)
        if dry_run:
            plan = dry_run_plan(resolved)
            if as_json:
                typer.echo(json.dumps(plan, indent=2, default=str))
            else:
                from hgltr_cli.console import out

                m = plan["model"]
                out.print(f"[bold]model[/] {m['backbone']['model']} (pretrained {m['backbone']['pretrained']}), "
                          f"PEFT {m['peft']['name']}, {m['classes']} classes, classifier {m['classifier']['kind']}")
                lp = m["learnable_params"]
                out.print(f"[bold]learnable[/] {lp['total']:,} (PEFT {lp['peft']:,}, h_t {lp['h_t']:,}, "
                          f"classifier {lp['classifier']:,}); paper count {m['paper_params']:,}; frozen "
                          f"{m['backbone']['frozen_params']:,}")
                t = plan["train"]
                out.print(f"[bold]train[/] {t['epochs']} epochs, global batch {t['global_batch']}, {t['optimizer']} "
                          f"lr {t['lr']} wd {t['weight_decay']}, cosine (warmup {t['warmup_epochs']} ep), "
                          f"{t['device']} {t['precision']}; loss {plan['loss']['name']} + "
                          f"{plan['hgltr']['alpha']}*L_mse + {plan['hgltr']['beta']}*L_dis")
            raise typer.Exit(0)
        from hgltr_cli.console import err
        from hgltr_cli.engine.loop import Interrupted
        from hgltr_cli.engine.run import run_train

        try:
            result = run_train(resolved, out_dir, resume=bool(resume), console=err, progress=not no_progress)
        except Interrupted as exc:
            if not exc.is_main:
                raise typer.Exit(EXIT_SIGNAL.get(exc.signame, 130)) from None
            err.print(f"[yellow]Stopped by {exc.signame} at step {exc.step}; a resumable checkpoint was written.[/]")
            err.print(f"resume with: hgltr train --resume {exc.run_dir}", soft_wrap=True, markup=False)
            raise typer.Exit(EXIT_SIGNAL.get(exc.signame, 130)) from None
        if not result.get("is_main", True):
            return
        if result.get("already_complete"):
            err.print(f"{result['run_dir']} is already complete ({result['epochs']} epochs); nothing to do.", markup=False)
            return
        if result.get("bad_images"):
            err.print(f"[yellow]skipped {len(result['bad_images'])} bad image file(s):[/]")
            for line in result["bad_images"]:
                err.print(f"  {line}", markup=False, soft_wrap=True)
        best = result.get("best_metric")
        err.print(f"done: {result['run_dir']}  (epochs {result['epochs']}, steps {result['step']}"
                  + (f", best val top-1 {best:.4f} at epoch {result['best_epoch']}" if best is not None else "")
                  + ")", markup=False, soft_wrap=True)
