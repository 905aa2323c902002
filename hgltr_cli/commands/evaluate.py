"""`hgltr eval`: long-tail, calibration and hierarchy metrics of a run on its val/test split."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from hgltr_cli.commands.common import BATCH_SIZE_HELP, ConfigOpt, SetOpt
from hgltr_cli.console import user_errors
from hgltr_cli.errors import HgltrError

TTA = ("none", "flip", "five-crop")
SHORTHANDS = {"dataset": "dataset.name", "data_root": "dataset.root", "hierarchy": "hierarchy.file",
              "model": "model.name", "pretrained": "model.pretrained"}

FILES = {"summary": "summary.json", "per_class": "per_class.csv", "logits": "logits.safetensors",
         "accuracy_vs_count": "accuracy_vs_train_count.png", "reliability": "reliability.png",
         "superclass": "superclass_accuracy.png"}


# ----------------------------------------------------------------------------- pieces

def _zero_shot_config(cfg):
    """The run's config with PEFT 'none': the un-tuned backbone, same prompts and classes."""
    from hgltr_cli.config import resolve
    from hgltr_cli.settings import TrainConfig

    data = cfg.to_dict()
    data["peft"] = {"name": "none"}
    return resolve(TrainConfig, [data])


class ZeroShot:
    """CLIP's zero-shot classifier: logit_scale * cos(image embedding, text prototype of each prompt)."""

    def __init__(self, model):
        import torch

        self.model = model
        scale = getattr(model.clip, "logit_scale", None)
        self.scale = float(scale.detach().float().exp().reshape(-1)[0]) if isinstance(scale, torch.Tensor) else 100.0
        if not model.text_initialised:
            raise HgltrError("zero-shot evaluation needs the text prototypes, which were not computed.")

    def __call__(self, images):
        return self.model.zero_shot_logits(images) * self.scale, None

    def to(self, device):
        self.model.to(device)
        return self

    def eval(self):
        self.model.eval()
        return self


def five_crop_transform(preprocess: dict):
    """Resize the shorter side to 8/7 of the crop, then the four corner crops and the centre one."""
    import torch
    from torchvision import transforms as T

    from hgltr_cli.data.transforms import _interp

    size = int(preprocess["image_size"])
    norm = T.Compose([T.ToTensor(), T.Normalize(tuple(preprocess["mean"]), tuple(preprocess["std"]))])
    resize = T.Resize(size * 8 // 7, interpolation=_interp(preprocess.get("interpolation", "bicubic")), antialias=True)
    five = T.FiveCrop(size)
    return T.Compose([resize, five, T.Lambda(lambda crops: torch.stack([norm(c) for c in crops]))])


def forward_tta(model, images, tta: str):
    """Logits averaged over the test-time views: flip (image + mirror) or five-crop ((B, 5, C, H, W) input)."""
    import torch

    from hgltr_cli.engine.runtime import inference_logits

    if tta == "five-crop":
        b, v = images.shape[:2]
        return inference_logits(model, images.flatten(0, 1)).reshape(b, v, -1).mean(1)
    logits = inference_logits(model, images)
    if tta == "flip":
        logits = (logits + inference_logits(model, torch.flip(images, dims=[3]))) / 2
    return logits


def evaluate(cfg, hierarchy, model, *, split: str, output: Path, tta: str = "none", batch_size: int = 64,
             device: str = "cpu", skip_bad_images: Optional[bool] = None, progress: bool = True,
             save_logits: bool = False, meta: Optional[dict] = None, plugins=None, console=None) -> dict[str, Any]:
    """Run the model over `split`, write summary JSON, per-class CSV and plots into `output`; return the summary."""
    import torch

    from hgltr_cli.bundle import eval_transform_for, preprocess_for
    from hgltr_cli.data.images import BadImageReport
    from hgltr_cli.engine.feed import eval_loader_for
    from hgltr_cli.evaluation.metrics import Accumulator, write_per_class_csv
    from hgltr_cli.evaluation.plots import (plot_accuracy_vs_train_count, plot_reliability_diagram,
                                            plot_superclass_accuracy)

    if tta not in TTA:
        raise HgltrError(f"unknown --tta {tta!r}.", f"Use one of: {', '.join(TTA)}.")
    if batch_size < 1:
        raise HgltrError(f"--batch-size must be >= 1, got {batch_size}.")
    if plugins is None:
        from hgltr_cli.plugins import get_plugins
        plugins = get_plugins()
    comp = plugins.get("datasets", cfg.dataset.name)
    options = cfg.options.get("dataset") if hasattr(cfg, "options") else None
    source = comp.factory(cfg.dataset, options if options is not None else comp.default_config())
    if not source.has_split(split):
        others = [s for s in ("val", "test") if s != split and source.has_split(s)]
        raise HgltrError(f"dataset {cfg.dataset.name!r} has no {split} split"
                         + (f" under {source.root}" if source.root else "") + ".",
                         (f"Evaluate --split {others[0]} instead, or give" if others else "Give")
                         + " the dataset that split (see docs/datasets.md).")
    data = source.split(split)
    names = list(source.class_names)
    if list(hierarchy.align(names).classes) != list(hierarchy.classes):
        raise HgltrError("the dataset's classes are not in the order the model was trained with.",
                         "Evaluate with the dataset (and --data-root) the run was trained on.")
    counts = list(source.train_counts)
    H = hierarchy.distance_matrix(cfg.hierarchy.distance)
    acc = Accumulator(counts, H=H, class_names=hierarchy.names, many_above=cfg.dataset.many_above,
                      few_below=cfg.dataset.few_below, few_inclusive=cfg.dataset.few_inclusive)

    preprocess = preprocess_for(cfg, getattr(model, "model", model))
    transform = five_crop_transform(preprocess) if tta == "five-crop" else eval_transform_for(preprocess)
    skip = cfg.dataset.skip_bad_images if skip_bad_images is None else skip_bad_images
    report = BadImageReport()
    loader = eval_loader_for(data, transform, batch_size, workers=cfg.dataset.workers, skip_bad_images=skip,
                             report=report)
    dev = torch.device(device)
    model = model.to(dev).eval()
    all_logits, all_targets = [], []
    start = time.perf_counter()
    n_images = 0
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from hgltr_cli.console import err

    bar = Progress(TextColumn(f"eval {split}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                   TimeRemainingColumn(), console=console or err, disable=not progress, transient=True)
    try:
        with bar, torch.no_grad():
            task = bar.add_task("eval", total=len(loader))
            for images, targets in loader:
                logits = forward_tta(model, images.to(dev, non_blocking=True), tta).cpu()
                acc.update(logits, targets)
                n_images += int(targets.numel())
                if save_logits:
                    all_logits.append(logits)
                    all_targets.append(targets)
                bar.advance(task)
    finally:
        loader.close()
    seconds = time.perf_counter() - start
    if acc.n == 0:
        raise HgltrError(f"no image of the {split} split could be evaluated"
                         + (f" ({report.count} bad image file(s) skipped)" if report else "") + ".")
    summary = acc.summary()
    output.mkdir(parents=True, exist_ok=True)
    rows = acc.per_class_rows()
    write_per_class_csv(rows, output / FILES["per_class"])
    class_acc = [r["accuracy"] for r in rows]
    plot_accuracy_vs_train_count(counts, class_acc, acc.groups, output / FILES["accuracy_vs_count"],
                                 many_above=cfg.dataset.many_above, few_below=cfg.dataset.few_below)
    plot_reliability_diagram(summary["reliability"], output / FILES["reliability"], ece=summary["ece"])
    plot_superclass_accuracy([hierarchy.top_level(i) for i in range(len(hierarchy))], class_acc,
                             output / FILES["superclass"])
    if save_logits:
        from safetensors.torch import save_file

        save_file({"logits": torch.cat(all_logits).contiguous(), "targets": torch.cat(all_targets).contiguous()},
                  str(output / FILES["logits"]))
    info = {"split": split, "tta": tta, "dataset": cfg.dataset.name, "images": n_images, "seconds": round(seconds, 3),
            "images_per_second": round(n_images / seconds, 2) if seconds > 0 else None, "device": str(dev),
            "bad_images": report.to_dict() if report else {"count": 0, "hits": 0, "files": []},
            "files": {k: v for k, v in FILES.items() if k != "logits" or save_logits}, **(meta or {})}
    summary["meta"] = info
    tmp = output / (FILES["summary"] + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    tmp.replace(output / FILES["summary"])
    return summary


# ----------------------------------------------------------------------------- the command

def register(app: typer.Typer) -> None:
    @app.command("eval")
    @user_errors
    def evaluate_cmd(
        run_dir: Annotated[Optional[str], typer.Argument(
            help="Run directory of `hgltr train` (omit only with --zero-shot and a config).", show_default=False)] = None,
        split: Annotated[str, typer.Option(help="Split to evaluate: test or val.")] = "test",
        output: Annotated[Optional[str], typer.Option(
            help="Folder for summary.json, per_class.csv and the plots [default: `RUN_DIR/eval/<split>`].")] = None,
        tta: Annotated[str, typer.Option(
            help="Test-time augmentation: none, flip (image + mirror) or five-crop (corners + centre of an 8/7 "
                 "resize); logits are averaged.")] = "none",
        zero_shot: Annotated[bool, typer.Option(
            "--zero-shot", help="Evaluate the un-tuned backbone: CLIP's cosine between image embeddings and the "
                                "run's text prompts (the paper's zero-shot row).")] = False,
        checkpoint: Annotated[str, typer.Option(help="Weights to evaluate: best, last, or a checkpoint name.")] = "best",
        batch_size: Annotated[int, typer.Option(help=BATCH_SIZE_HELP)] = 64,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        skip_bad_images: Annotated[Optional[bool], typer.Option(
            "--skip-bad-images/--no-skip-bad-images",
            help="Skip undecodable images (counted in summary.json) [default: the run's setting].")] = None,
        save_logits: Annotated[bool, typer.Option(
            "--save-logits", help="Also write logits.safetensors (logits and targets) for later analysis.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of a table.")] = False,
        no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bar.")] = False,
        dataset: Annotated[Optional[str], typer.Option(help="Without RUN_DIR: dataset plugin.",
                                                      rich_help_panel="Zero-shot without a run")] = None,
        data_root: Annotated[Optional[str], typer.Option(help="Without RUN_DIR: dataset folder.",
                                                        rich_help_panel="Zero-shot without a run")] = None,
        hierarchy: Annotated[Optional[str], typer.Option(help="Without RUN_DIR: hierarchy file.",
                                                        rich_help_panel="Zero-shot without a run")] = None,
        model: Annotated[Optional[str], typer.Option(help="Without RUN_DIR: open_clip architecture.",
                                                    rich_help_panel="Zero-shot without a run")] = None,
        pretrained: Annotated[Optional[str], typer.Option(help="Without RUN_DIR: weights file, tag or none.",
                                                         rich_help_panel="Zero-shot without a run")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
    ):
        """Evaluate a run: top-1/top-5, many/medium/few, macro-F1, worst-class and harmonic-mean accuracy,
        ECE (15 bins), mistake severity and average hierarchical distance @1/@5.

        Writes summary.json, per_class.csv and three PNG plots (accuracy vs training count,
        reliability diagram, accuracy per top-level superclass) and prints a table.

        Examples:

          hgltr eval runs/a                                  # test split -> runs/a/eval/test/

          hgltr eval runs/a --split val --tta flip --json

          hgltr eval runs/a --zero-shot                      # the un-tuned CLIP, same prompts

          hgltr eval --zero-shot --dataset imagefolder --data-root DATA --hierarchy h.json \\
              --model ViT-B-16 --pretrained weights.safetensors --output eval-zs/
        """
        from hgltr_cli.console import err, out
        from hgltr_cli.evaluation.report import print_summary
        from hgltr_cli.model.hgltr_model import resolve_device

        if split not in ("test", "val", "train"):
            raise HgltrError(f"unknown --split {split!r}.", "Use test or val (or train).")
        if tta not in TTA:  # checked again in evaluate(); here before the model is built
            raise HgltrError(f"unknown --tta {tta!r}.", f"Use one of: {', '.join(TTA)}.")
        if batch_size < 1:
            raise HgltrError(f"--batch-size must be >= 1, got {batch_size}.")
        flags = dict(dataset=dataset, data_root=data_root, hierarchy=hierarchy, model=model, pretrained=pretrained)
        dev = str(resolve_device(device))
        meta: dict[str, Any] = {"zero_shot": zero_shot}
        if run_dir is not None:
            given = [k.replace("_", "-") for k, v in flags.items() if v is not None]
            if given or config or set_:
                raise HgltrError(f"a run directory brings its own config; drop "
                                 f"{', '.join('--' + g for g in given) or '--config/--set'}.",
                                 "Those options are for `hgltr eval --zero-shot` without a run directory.")
            from hgltr_cli.rundir import open_run

            run = open_run(run_dir)
            meta["run_dir"] = str(run.path)
            if zero_shot:
                from hgltr_cli.engine.runtime import seed_everything
                from hgltr_cli.model import build_model

                cfg = _zero_shot_config(run.load_config())
                hier = run.load_hierarchy()
                seed_everything(cfg.train.seed)  # a random-init backbone is the run's own
                net = ZeroShot(build_model(cfg, hier, "cpu"))
            else:
                from hgltr_cli.rundir import restore

                cfg, hier, net = restore(run.path, checkpoint, "cpu")
                meta["checkpoint"] = checkpoint
            default_out = run.eval_dir / (split + ("-zero-shot" if zero_shot else "") + ("" if tta == "none" else f"-{tta}"))
        else:
            if not zero_shot:
                raise HgltrError("missing RUN_DIR.", "Pass the run directory of `hgltr train`, e.g. `hgltr eval runs/a`.")
            if not output:
                raise HgltrError("zero-shot evaluation without a run directory needs --output DIR.")
            from hgltr_cli.commands.common import resolve_config
            from hgltr_cli.engine.runtime import seed_everything
            from hgltr_cli.hierarchy import load_hierarchy
            from hgltr_cli.model import build_model
            from hgltr_cli.plugins import get_plugins
            from hgltr_cli.settings import TrainConfig

            base = resolve_config(TrainConfig, config=config, sets=set_,
                                  shorthands={SHORTHANDS[k]: v for k, v in flags.items()})
            cfg = _zero_shot_config(base)
            if not cfg.hierarchy.file:
                raise HgltrError("zero-shot evaluation needs the class hierarchy (for prompts and hierarchy metrics).",
                                 "Pass --hierarchy FILE.")
            plugins = get_plugins()
            comp = plugins.get("datasets", cfg.dataset.name)
            opts = cfg.options.get("dataset")
            names = comp.factory(cfg.dataset, opts if opts is not None else comp.default_config()).class_names
            hier = load_hierarchy(cfg.hierarchy.file).align(names)
            seed_everything(cfg.train.seed)
            net = ZeroShot(build_model(cfg, hier, "cpu"))
            default_out = Path(output)
        out_dir = Path(output) if output else default_out
        summary = evaluate(cfg, hier, net, split=split, output=out_dir, tta=tta, batch_size=batch_size, device=dev,
                           skip_bad_images=skip_bad_images, progress=not no_progress and not as_json,
                           save_logits=save_logits, meta=meta)
        m = summary["meta"]
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
        else:
            title = f"hgltr eval {split}" + (" (zero-shot)" if zero_shot else "") + (f", TTA {tta}" if tta != "none" else "")
            print_summary(summary, out, title=title)
            out.print(f"{m['images']} images in {m['seconds']:.2f} s ({m['images_per_second']} img/s); "
                      f"written to {out_dir}/", soft_wrap=True, markup=False)
        if m["bad_images"]["count"]:
            err.print(f"[yellow]skipped {m['bad_images']['count']} bad image file(s):[/]")
            for f in m["bad_images"]["files"]:
                err.print(f"  {f['path']}: {f['reason']}", markup=False, soft_wrap=True)
