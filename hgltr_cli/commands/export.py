"""`hgltr export`: a run directory -> a self-contained, parity-checked bundle."""
from __future__ import annotations

import json
from typing import Annotated, Optional

import typer

from hgltr_cli.console import user_errors
from hgltr_cli.errors import HgltrError


def register(app: typer.Typer) -> None:
    @app.command("export")
    @user_errors
    def export_cmd(
        run_dir: Annotated[str, typer.Argument(help="Run directory of `hgltr train`.", show_default=False)],
        output: Annotated[str, typer.Option(help="New (or empty) folder for the bundle.", show_default=False)],
        format: Annotated[str, typer.Option(
            "--format", "-f", help="Exporter: safetensors, torchscript, onnx, or a plugin's (`hgltr list exporters`).")
        ] = "safetensors",
        option: Annotated[Optional[list[str]], typer.Option(
            "--option", "-o", help="Exporter option KEY=VALUE (repeatable), e.g. -o opset=18 -o dynamic_batch=false; "
                                   "`hgltr list exporters` shows each exporter's options.", show_default=False)] = None,
        tolerance: Annotated[Optional[float], typer.Option(
            help="Max abs logit difference allowed between the export and the PyTorch model [default: 1e-4].",
            show_default=False)] = None,
        parity_images: Annotated[Optional[str], typer.Option(
            help="Folder of real images for the parity check [default: the run's test split, else val, else train].",
            show_default=False)] = None,
        parity_count: Annotated[int, typer.Option(help="Images used by the parity check.")] = 8,
        checkpoint: Annotated[str, typer.Option(help="Weights to export: best, last or a checkpoint name.")] = "best",
        force: Annotated[bool, typer.Option("--force", help="Replace a bundle already in --output.")] = False,
        as_json: Annotated[bool, typer.Option("--json", help="Print what was written (files, checksums, parity) as JSON.")] = False,
    ):
        """Export a run as a self-contained bundle that `hgltr predict` accepts.

        Every format writes model.safetensors (image tower + classifier; LoRA merged into the
        weights), hierarchy.json and manifest.json (class names, preprocessing, checksums);
        torchscript adds model.ts and onnx adds model.onnx, graphs from a normalised image batch
        to logits. Export runs the PyTorch model, the reloaded bundle and the graph on the same
        real images and prints the max abs logit difference; above the tolerance it fails and
        removes the output.

        Examples:

          hgltr export runs/a --format onnx --output bundles/a-onnx

          hgltr export runs/a -f torchscript --output bundles/a-ts --parity-images photos/

          hgltr export runs/a -f onnx -o opset=18 --tolerance 1e-5 --output bundles/a
        """
        from hgltr_cli.config import deep_merge, parse_set
        from hgltr_cli.console import err, out
        from hgltr_cli.exporting import describe, export_run

        opts: dict = {}
        for item in option or []:
            if "." in item.split("=", 1)[0]:
                raise HgltrError(f"--option {item!r}: exporter options are plain keys.", "Example: -o opset=18")
            opts = deep_merge(opts, parse_set(item))
        if tolerance is not None and tolerance < 0:
            raise HgltrError(f"--tolerance must be >= 0, got {tolerance}.")
        log = (lambda msg: err.print(msg, markup=False, soft_wrap=True)) if as_json else \
            (lambda msg: out.print(msg, markup=False, soft_wrap=True))
        result = export_run(run_dir, format, output, which=checkpoint, options=opts, tolerance=tolerance,
                            parity_images=parity_images, parity_count=parity_count, force=force, log=log)
        if as_json:
            typer.echo(json.dumps(describe(result), indent=2))
        else:
            files = result.manifest["files"]
            size = sum(f["bytes"] for f in files.values())
            peft = result.manifest["peft"]
            how = "merged into the weights" if peft["merged"] else \
                ("kept as modules" if peft["modules_in_weights"] else "none")
            out.print(f"exported {format} bundle to {result.output}/ ({', '.join(sorted(files))} + manifest.json, "
                      f"{size / 1e6:.1f} MB); PEFT {peft['name']}: {how}", markup=False, soft_wrap=True)
