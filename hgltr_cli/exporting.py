"""`hgltr export` behind the command: exporter contract, parity inputs, the checked export itself.

Exporter plugins (hook ``register_exporters``) register ``factory(config) -> Exporter``; the
config dataclass should carry ``tolerance`` (max abs logit difference allowed) and
``merge_peft`` (fold mergeable PEFT modules such as LoRA into the weights). An exporter writes
its graph into the bundle folder and can run it back for the parity check::

    class MyExporter(Exporter):
        format = "myformat"
        def export(self, module, example, out_dir) -> dict | None:   # module: images -> logits, eval, fp32, CPU
            ...write out_dir / "model.myformat"...
            return {"file": "model.myformat", "input": "images", "output": "logits"}
        def run(self, out_dir, graph, images) -> torch.Tensor:        # logits of the written file
            ...

Every export writes the safetensors bundle (weights, hierarchy, manifest) that `hgltr predict`
loads; the format's graph is added beside it. Parity: the restored PyTorch model (PEFT not
merged) is the reference; the reloaded bundle and the exported graph are run on the same real,
preprocessed images (a full batch and a batch of one), and the largest absolute logit
difference of each must stay within the tolerance, else the output is removed and the export fails.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence

import torch

from hgltr_cli.errors import HgltrError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
STAGING_PREFIX = ".hgltr-export-"


class Exporter:
    """Base class of exporter plugins (see the module docstring)."""

    format: ClassVar[str] = ""

    def __init__(self, config: Any = None):
        self.config = config

    @property
    def tolerance(self) -> float:
        return float(getattr(self.config, "tolerance", 1e-4))

    @property
    def merge_peft(self) -> bool:
        return bool(getattr(self.config, "merge_peft", True))

    @property
    def dynamic_batch(self) -> bool:
        return bool(getattr(self.config, "dynamic_batch", True))

    def options(self) -> dict:
        import dataclasses

        return dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}

    def export(self, module: torch.nn.Module, example: torch.Tensor, out_dir: Path) -> Optional[dict]:
        return None

    def run(self, out_dir: Path, graph: dict, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


# ----------------------------------------------------------------------------- parity inputs

def list_images(folder: str | Path) -> list[Path]:
    """Image files under folder (recursive, sorted, hidden entries skipped)."""
    root = Path(folder)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise HgltrError(f"parity image folder {str(root)!r} does not exist.", "Pass --parity-images DIR with images.")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames)
                if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return out


def _spread(n_total: int, n: int) -> list[int]:
    if n_total <= n:
        return list(range(n_total))
    return sorted({round(i * (n_total - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]


def parity_inputs(cfg, preprocess: dict, *, images_dir: Optional[str] = None, count: int = 8,
                  plugins=None) -> tuple[torch.Tensor, str]:
    """(N, 3, H, W) preprocessed real images and where they came from.

    From --parity-images DIR when given, else from the run's dataset: the test split, else val,
    else train (images spread evenly over the split). Undecodable files are skipped.
    """
    from hgltr_cli.bundle import eval_transform_for
    from hgltr_cli.data.images import BadImageError, load_image_rgb

    if count < 1:
        raise HgltrError(f"--parity-count must be >= 1, got {count}.")
    tf = eval_transform_for(preprocess)
    tensors: list[torch.Tensor] = []
    if images_dir:
        files = list_images(images_dir)
        for p in [files[i] for i in _spread(len(files), count)]:
            try:
                tensors.append(tf(load_image_rgb(p)))
            except BadImageError:
                continue
        where = f"{len(tensors)} image(s) from {images_dir}"
    else:
        if plugins is None:
            from hgltr_cli.plugins import get_plugins
            plugins = get_plugins()
        try:
            comp = plugins.get("datasets", cfg.dataset.name)
            options = cfg.options.get("dataset") if hasattr(cfg, "options") else None
            source = comp.factory(cfg.dataset, options if options is not None else comp.default_config())
        except HgltrError as exc:
            raise HgltrError(f"cannot read the run's dataset for the parity check: {exc.message}",
                             "Pass --parity-images DIR (a folder of real images) instead.") from None
        split_name = next((s for s in ("test", "val", "train") if source.has_split(s)), None)
        if split_name is None:
            raise HgltrError("the run's dataset has no images for the parity check.",
                             "Pass --parity-images DIR (a folder of real images).")
        split = source.split(split_name)
        for i in _spread(len(split), count):
            try:
                tensors.append(tf(split.load(i)))
            except BadImageError:
                continue
        where = f"{len(tensors)} image(s) of the {split_name} split of {cfg.dataset.name}"
    if not tensors:
        raise HgltrError("no readable image for the parity check.", "Pass --parity-images DIR with readable images.")
    return torch.stack(tensors), where


# ----------------------------------------------------------------------------- the export

@dataclass
class ExportResult:
    output: Path
    format: str
    manifest: dict
    parity: dict


def _refuse_interrupted_swap(output: Path) -> None:
    """An export killed mid-swap leaves the previous bundle's files in a backup folder: the only copy,
    so no export may go on there until the user has put them back or let them go."""
    for e in sorted(output.glob(f"{STAGING_PREFIX}old-*")):
        if e.is_dir() and any(e.iterdir()):
            raise HgltrError(f"{str(output)!r} holds {e.name}/, the previous bundle's files from an export that was "
                             "interrupted while replacing them; nothing was changed.",
                             f"Move its files back into {str(output)!r} (or delete the folder if you do not need "
                             "them), then export again.")


def _prepare_output(output: Path, force: bool) -> tuple[bool, Path, list[str]]:
    """(created, staging dir inside output, names of the old bundle's files that --force replaces).

    Refuses to replace anything but an old bundle, so that only its own files are ever moved away.
    """
    from hgltr_cli.bundle import MANIFEST

    if output.exists() and not output.is_dir():
        raise HgltrError(f"--output {str(output)!r} exists and is not a directory.", "Pick another --output folder.")
    created = not output.exists()
    replaced: list[str] = []
    if not created:
        _refuse_interrupted_swap(output)
        entries = [e for e in output.iterdir() if not e.name.startswith(STAGING_PREFIX)]
        if entries:
            if not (force and (output / MANIFEST).is_file()):
                raise HgltrError(f"--output {str(output)!r} is not empty.",
                                 "Pick a new or empty folder (or --force to replace a bundle exported there before).")
            # --force replaces what is there: only a real bundle, and nothing beside its own files
            from hgltr_cli.bundle import read_manifest

            try:
                old = read_manifest(output)
            except HgltrError as exc:
                raise HgltrError(f"--force: {str(output)!r} holds a {MANIFEST} that is not an hgltr bundle's "
                                 f"({exc.message}); nothing was removed.", "Pick a new or empty --output folder.") from None
            extra = sorted(e.name for e in entries if e.name != MANIFEST and e.name not in old["files"])
            if extra:
                raise HgltrError(f"--force: {str(output)!r} holds files that are not part of its bundle "
                                 f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}); nothing was removed.",
                                 "Move them away, or pick a new or empty --output folder.")
            replaced = sorted(e.name for e in entries)
    output.mkdir(parents=True, exist_ok=True)
    staging = output / f"{STAGING_PREFIX}{os.getpid()}"
    if staging.exists():
        import shutil
        shutil.rmtree(staging)
    staging.mkdir()
    return created, staging, replaced


def _move_all(names: Sequence[str], src: Path, dst: Path) -> None:
    """Move the named files from src to dst, all or nothing: if one move fails, those done go back.

    os.replace is atomic within one filesystem, which holds here: src and dst are both in the output folder.
    """
    done: list[str] = []
    try:
        for name in names:
            os.replace(src / name, dst / name)
            done.append(name)
    except BaseException:
        for name in reversed(done):
            os.replace(dst / name, src / name)
        raise


def _publish(staging: Path, output: Path, names: Sequence[str], replaced: Sequence[str]) -> None:
    """Move the staged files into output without ever losing the bundle they replace.

    The old files wait in a backup folder beside the staging one until every new file is in place;
    if a move fails (full disk, permissions) they come back and a clean error names the folder.
    """
    import contextlib
    import shutil
    import tempfile

    backup: Optional[Path] = None
    try:
        backup = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}old-", dir=output))
        _move_all(replaced, output, backup)
        try:
            _move_all(names, staging, output)
        except BaseException:
            _move_all(replaced, backup, output)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    except OSError as exc:
        kept = (f"the files that were there are in {str(backup)!r}" if backup and any(backup.iterdir())
                else "the files that were there are unchanged")
        raise HgltrError(f"could not move the exported files into {str(output)!r} ({exc}); {kept}.",
                         "Free disk space or fix the folder's permissions, then export again.") from exc
    finally:
        if backup is not None:
            with contextlib.suppress(OSError):  # kept only while it still holds the old files
                backup.rmdir()


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = torch.as_tensor(a).float().cpu(), torch.as_tensor(b).float().cpu()
    if a.shape != b.shape:
        raise HgltrError(f"exported model returned logits of shape {tuple(a.shape)}, expected {tuple(b.shape)}.")
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - b).abs().max()) if a.numel() else 0.0


def export_run(run_dir: str | Path, fmt: str, output: str | Path, *, which: str = "best",
               options: Optional[dict] = None, tolerance: Optional[float] = None,
               parity_images: Optional[str] = None, parity_count: int = 8, force: bool = False,
               plugins=None, log=None) -> ExportResult:
    """Export a run as a bundle in `fmt`, check parity, and return what was written.

    On any failure (parity included) nothing is left behind: the output folder is removed if
    this call created it, else left as it was (a bundle --force was to replace stays intact).
    """
    import shutil

    from hgltr_cli import bundle as B
    from hgltr_cli.config import build_dataclass
    from hgltr_cli.rundir import restore

    if plugins is None:
        from hgltr_cli.plugins import get_plugins
        plugins = get_plugins()
    comp = plugins.get("exporters", fmt)
    data = dict(options or {})
    if tolerance is not None:
        data["tolerance"] = tolerance
    config = build_dataclass(comp.config, data, f"export.{fmt}") if comp.config else None
    exporter = comp.factory(config)
    tol = exporter.tolerance
    if not tol >= 0:
        raise HgltrError(f"tolerance must be >= 0, got {tol}.")

    cfg, hierarchy, model = restore(run_dir, which, "cpu", plugins=plugins)
    model.float().eval()
    preprocess = B.preprocess_for(cfg, model)
    images, where = parity_inputs(cfg, preprocess, images_dir=parity_images, count=parity_count, plugins=plugins)
    with torch.no_grad():
        reference = model(images)[0].float()
        reference_one = model(images[:1])[0].float()

    output = Path(output)
    created, staging, replaced = _prepare_output(output, force)
    try:
        peft_record = B.prepare_for_export(model, merge=exporter.merge_peft)
        source = {"run_dir": str(Path(run_dir).resolve()), "checkpoint": which, "config_model": cfg.model.name,
                  "peft": cfg.peft.name, "dataset": cfg.dataset.name}
        manifest = B.write_bundle_core(staging, model=model, cfg=cfg, hierarchy=hierarchy, peft_record=peft_record,
                                       source=source)
        # 1. the bundle as predict loads it
        B.write_manifest(staging, manifest)  # rewritten below with the parity record
        bundle = B.load_bundle(staging, plugins=plugins)
        with torch.no_grad():
            diffs = {"bundle": max(_max_abs(bundle.model(images)[0], reference),
                                   _max_abs(bundle.model(images[:1])[0], reference_one))}
        # 2. the format's graph
        module = B.LogitsOnly(B.inference_model(model)).eval()
        try:
            with torch.no_grad():
                graph = exporter.export(module, images, staging)
        except HgltrError:
            raise
        except Exception as exc:  # a tracer/converter failure names the format and the op, not a traceback
            raise HgltrError(f"the {fmt} exporter could not convert this model: {type(exc).__name__}: {exc}",
                             "Try another --format (safetensors always works), or report the failing op.") from exc
        if graph:
            name = graph["file"]
            manifest["files"][name] = B.file_record(B.safe_join(staging, name))
            try:
                with torch.no_grad():
                    got = exporter.run(staging, graph, images)
            except HgltrError:
                raise
            except Exception as exc:
                raise HgltrError(f"the exported {fmt} graph does not run: {type(exc).__name__}: {exc}",
                                 "Try another --format (safetensors always works), or report the failing op.") from exc
            with torch.no_grad():
                if got is None:  # the exporter could not run its graph here (and was told that is fine)
                    d = None
                else:
                    d = _max_abs(got, reference)
                    if exporter.dynamic_batch:
                        d = max(d, _max_abs(exporter.run(staging, graph, images[:1]), reference_one))
            diffs[fmt] = d
            manifest["graph"] = graph
        manifest["export_format"] = fmt
        manifest["exporter_options"] = exporter.options()
        parity = {"tolerance": tol, "inputs": where, "num_images": int(images.shape[0]),
                  "max_abs_diff": diffs, "passed": all(v <= tol for v in diffs.values() if v is not None),
                  "unchecked": [k for k, v in diffs.items() if v is None]}
        manifest["parity"] = parity
        if log is not None:
            for k, v in diffs.items():
                log(f"parity {k}: not checked (its runtime is not installed)" if v is None else
                    f"parity {k}: max |logit difference| = {v:.3g} (tolerance {tol:g}) on {where}")
        if not parity["passed"]:
            bad = ", ".join(f"{k} {v:.3g}" for k, v in diffs.items() if v is not None and not v <= tol)
            raise HgltrError(f"export parity check failed: max abs logit difference {bad} exceeds the tolerance "
                             f"{tol:g}; the output was removed.",
                             "Inspect the model or raise the tolerance knowingly (--tolerance / --option tolerance=...).")
        B.write_manifest(staging, manifest)
        names = [B.safe_join(staging, n).name for n in [*manifest["files"], B.MANIFEST]]
        _publish(staging, output, names, replaced)
        shutil.rmtree(staging, ignore_errors=True)
        return ExportResult(output=output, format=fmt, manifest=manifest, parity=parity)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(output, ignore_errors=True)
        raise


def describe(result: ExportResult) -> dict:
    m = result.manifest
    return {"output": str(result.output), "format": result.format, "files": m["files"], "parity": result.parity,
            "peft": m["peft"], "num_classes": m["num_classes"], "graph": m.get("graph")}


def format_names(plugins=None) -> Sequence[str]:
    if plugins is None:
        from hgltr_cli.plugins import get_plugins
        plugins = get_plugins()
    return plugins.registry("exporters").names()
