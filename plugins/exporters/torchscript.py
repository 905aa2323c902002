"""`torchscript`: the bundle plus `model.ts`, a traced TorchScript graph (normalised image batch -> logits).

Load it in any libtorch/PyTorch program with ``torch.jit.load("model.ts")``; inputs are float32
NCHW RGB batches preprocessed as the manifest's `preprocess` says. hgltr itself never loads the
file back except right after writing it, for the parity check (TorchScript archives run code).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from hgltr_cli import hookimpl
from hgltr_cli.bundle import safe_join
from hgltr_cli.errors import HgltrError
from hgltr_cli.exporting import Exporter

FILE = "model.ts"


@dataclass
class TorchScriptConfig:
    tolerance: float = 1e-4  # max abs logit difference against the run's PyTorch model
    merge_peft: bool = True  # fold mergeable PEFT modules (LoRA) into the weights before tracing
    freeze: bool = False  # torch.jit.freeze: inline weights as constants (faster start-up, no .parameters())
    dynamic_batch: bool = True  # check the graph on a batch of one too (traced graphs take any batch size)

    def validate(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError("tolerance must be >= 0")


class TorchScriptExporter(Exporter):
    format = "torchscript"

    def export(self, module, example, out_dir: Path) -> dict:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # jit deprecation and tracer warnings; parity is checked instead
            try:
                traced = torch.jit.trace(module, (example,), check_trace=False)
                if self.config.freeze:
                    traced = torch.jit.freeze(traced)
            except Exception as exc:  # noqa: BLE001 - tracer failures name the op
                raise HgltrError(f"TorchScript tracing failed: {type(exc).__name__}: {str(exc)[:400]}",
                                 "Try --format onnx or --format safetensors.") from None
            traced.save(str(safe_join(out_dir, FILE)))
        return {"file": FILE, "kind": "torchscript", "input": "images", "output": "logits",
                "input_shape": ["batch", *list(example.shape[1:])], "dtype": "float32", "frozen": self.config.freeze}

    def run(self, out_dir: Path, graph: dict, images: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loaded = torch.jit.load(str(safe_join(out_dir, graph["file"])), map_location="cpu")  # just written by us
        with torch.no_grad():
            return loaded(images)


@hookimpl
def register_exporters(register):
    register("torchscript", TorchScriptExporter, config=TorchScriptConfig,
             description="Bundle + traced TorchScript graph model.ts (normalised images -> logits)")
