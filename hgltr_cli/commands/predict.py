"""`hgltr predict`: top-k classes (with probabilities and the top-1's taxonomy path) of image files."""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer

from rich.markup import escape

from hgltr_cli.commands.common import BATCH_SIZE_HELP
from hgltr_cli.console import user_errors
from hgltr_cli.errors import HgltrError

#: exit status when some images could not be read (the others were still predicted)
EXIT_SOME_FAILED = 3


@dataclass
class Predictor:
    """A model with its class names, hierarchy and eval preprocessing, from a run dir or a bundle."""

    model: Any
    class_names: list
    hierarchy: Any
    preprocess: dict
    source: str  # 'run' or 'bundle'

    def taxonomy_path(self, k: int) -> list[str]:
        """Root-first display names from the top-level superclass down to class k (root excluded)."""
        return list(reversed(self.hierarchy.ancestors(k))) + [self.hierarchy.names[k]]


def load_predictor(target: str | Path, device: str = "cpu", which: str = "best", plugins=None) -> Predictor:
    """A run directory (its `which` checkpoint) or an exported bundle folder."""
    from hgltr_cli.bundle import is_bundle, load_bundle, preprocess_for
    from hgltr_cli.rundir import CONFIG

    p = Path(target)
    if not p.exists():
        raise HgltrError(f"{str(p)!r} does not exist.", "Pass a run directory of `hgltr train` or a bundle of "
                                                        "`hgltr export`.")
    if is_bundle(p):
        b = load_bundle(p, device, plugins=plugins)
        return Predictor(b.model, b.class_names, b.hierarchy, b.preprocess, "bundle")
    if (p / CONFIG).is_file():
        from hgltr_cli.rundir import restore

        cfg, hierarchy, model = restore(p, which, device, plugins=plugins)
        return Predictor(model, list(hierarchy.names), hierarchy, preprocess_for(cfg, model), "run")
    raise HgltrError(f"{str(p)!r} is neither a run directory (no config.yaml) nor a bundle (no manifest.json).",
                     "Pass the --output folder of `hgltr train` or of `hgltr export`.")


def expand_inputs(items: list[str]) -> list[str]:
    """Files as given, folders expanded to their image files (recursive, sorted); missing paths kept
    (they are reported as unreadable, not fatal)."""
    from hgltr_cli.exporting import list_images

    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = list_images(p)
            if not found:
                out.append(item)  # reported: no image in the folder
            out += [str(f) for f in found]
        else:
            out.append(item)
    return out


def predict_files(predictor: Predictor, files: list[str], *, top_k: int = 5, batch_size: int = 32,
                  device: str = "cpu") -> Iterator[dict]:
    """One dict per input, in input order: {"image", "predictions", "path"} or {"image", "error"}."""
    import torch

    from hgltr_cli.bundle import eval_transform_for
    from hgltr_cli.data.images import BadImageError, load_image_rgb
    from hgltr_cli.engine.runtime import inference_logits

    if top_k < 1:
        raise HgltrError(f"--top-k must be >= 1, got {top_k}.")
    if batch_size < 1:
        raise HgltrError(f"--batch-size must be >= 1, got {batch_size}.")
    tf = eval_transform_for(predictor.preprocess)
    k = min(top_k, len(predictor.class_names))
    dev = torch.device(device)
    model = predictor.model.to(dev).eval()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        results: list[Optional[dict]] = [None] * len(chunk)
        tensors, slots = [], []
        for i, f in enumerate(chunk):
            if Path(f).is_dir():
                results[i] = {"image": f, "error": "folder holds no image file"}
                continue
            try:
                tensors.append(tf(load_image_rgb(f)))
                slots.append(i)
            except BadImageError as exc:
                results[i] = {"image": f, "error": exc.reason}
        if tensors:
            with torch.no_grad():
                logits = inference_logits(model, torch.stack(tensors).to(dev))
            probs = logits.softmax(dim=1).cpu()
            top_p, top_i = probs.topk(k, dim=1)
            for row, i in enumerate(slots):
                idx = top_i[row].tolist()
                results[i] = {"image": chunk[i],
                              "predictions": [{"class": predictor.class_names[c], "probability": float(p)}
                                              for c, p in zip(idx, top_p[row].tolist())],
                              "path": predictor.taxonomy_path(idx[0])}
        yield from results  # type: ignore[misc]


def register(app: typer.Typer) -> None:
    @app.command("predict")
    @user_errors
    def predict_cmd(
        target: Annotated[str, typer.Argument(help="Run directory (`hgltr train`) or bundle (`hgltr export`).",
                                              show_default=False)],
        images: Annotated[list[str], typer.Argument(help="Image files and/or folders (searched recursively).",
                                                    show_default=False)],
        top_k: Annotated[int, typer.Option("--top-k", "-k", help="Classes to report per image.")] = 5,
        as_json: Annotated[bool, typer.Option(
            "--json", help="One JSON object per line and image: "
                           '{"image", "predictions": [{"class", "probability"}], "path"} or {"image", "error"}.')] = False,
        batch_size: Annotated[int, typer.Option(help=BATCH_SIZE_HELP)] = 32,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
        checkpoint: Annotated[str, typer.Option(help="For a run directory: best, last or a checkpoint name.")] = "best",
    ):
        """Predict the top-k classes of images, with probabilities and the top-1's taxonomy path.

        An unreadable image (corrupt, empty, missing, not an image) is reported for that file
        (on stderr, and as {"image": ..., "error": ...} with --json) and the others go on; the exit
        status is then 3 (0 when every image was predicted).

        Examples:

          hgltr predict runs/a photo.jpg

          hgltr predict bundle/ photos/ --top-k 3 --json > predictions.jsonl
        """
        from hgltr_cli.console import err, out
        from hgltr_cli.model.hgltr_model import resolve_device

        if top_k < 1:  # checked again in predict_files; here before the model is loaded
            raise HgltrError(f"--top-k must be >= 1, got {top_k}.")
        if batch_size < 1:
            raise HgltrError(f"--batch-size must be >= 1, got {batch_size}.")
        dev = str(resolve_device(device))
        predictor = load_predictor(target, dev, checkpoint)
        files = expand_inputs(images)
        failed = 0
        done = 0
        start = time.perf_counter()
        rows = []
        for res in predict_files(predictor, files, top_k=top_k, batch_size=batch_size, device=dev):
            if "error" in res:
                failed += 1
                err.print(f"[red]cannot read[/] {escape(res['image'])}: {escape(res['error'])}", soft_wrap=True, highlight=False)
            else:
                done += 1
            if as_json:
                sys.stdout.write(json.dumps(res, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            elif "error" not in res:
                rows.append(res)
        seconds = time.perf_counter() - start
        if not as_json:
            from rich.table import Table

            table = Table(title=escape(f"hgltr predict ({predictor.source}: {target})"), header_style="bold")
            table.add_column("image", overflow="fold")
            table.add_column("top-1", style="bold")
            table.add_column("p", justify="right")
            table.add_column("taxonomy path")
            table.add_column(f"top-{min(top_k, len(predictor.class_names))}", style="dim")
            for r in rows:
                p0 = r["predictions"][0]
                table.add_row(escape(r["image"]), escape(p0["class"]), f"{p0['probability']:.3f}", escape(" > ".join(r["path"])),
                              escape(", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])))
            out.print(table)
            out.print(f"{done} image(s) predicted in {seconds:.2f} s ({done / seconds:.1f} img/s)"
                      + (f"; {failed} could not be read" if failed else ""), markup=False)
        if failed:
            raise typer.Exit(EXIT_SOME_FAILED)
