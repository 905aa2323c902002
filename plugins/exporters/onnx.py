"""`onnx`: the bundle plus `model.onnx` (input `images`: float32 N x 3 x H x W, output `logits`: N x K).

Exported with PyTorch's TorchScript-based ONNX exporter (``dynamo=False``: it needs no
onnxscript and handles open_clip's ViT); the batch axis is dynamic unless dynamic_batch is off.
The parity check runs the file with onnxruntime when installed (pip install 'hgltr[export]').
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

FILE = "model.onnx"


@dataclass
class OnnxConfig:
    opset: int = 17  # ONNX opset version
    dynamic_batch: bool = True  # batch axis named 'batch' (any N); off: fixed to the parity batch size
    tolerance: float = 1e-4  # max abs logit difference between onnxruntime and the run's PyTorch model
    merge_peft: bool = True  # fold mergeable PEFT modules (LoRA) into the weights before export
    check_with_onnxruntime: bool = True  # off: skip the parity run when onnxruntime is unavailable

    def validate(self) -> None:
        if not 7 <= self.opset <= 23:
            raise ValueError("opset must be between 7 and 23")
        if not self.tolerance >= 0:
            raise ValueError("tolerance must be >= 0")


class OnnxExporter(Exporter):
    format = "onnx"

    def export(self, module, example, out_dir: Path) -> dict:
        path = safe_join(out_dir, FILE)
        axes = {"images": {0: "batch"}, "logits": {0: "batch"}} if self.config.dynamic_batch else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # legacy-exporter deprecation and tracer warnings
            try:
                torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["images"],
                                  output_names=["logits"], dynamic_axes=axes, opset_version=self.config.opset,
                                  do_constant_folding=True)
            except Exception as exc:  # noqa: BLE001
                raise HgltrError(f"ONNX export failed: {type(exc).__name__}: {str(exc)[:400]}",
                                 "Try another --option opset=N, or --format torchscript / safetensors.") from None
        try:
            import onnx

            onnx.checker.check_model(str(path))
        except ImportError:
            pass
        except Exception as exc:  # noqa: BLE001
            raise HgltrError(f"the exported ONNX model is invalid: {exc}") from None
        return {"file": FILE, "kind": "onnx", "opset": self.config.opset, "input": "images", "output": "logits",
                "input_shape": ["batch" if self.config.dynamic_batch else int(example.shape[0]),
                                *list(example.shape[1:])], "dtype": "float32"}

    def run(self, out_dir: Path, graph: dict, images: torch.Tensor) -> torch.Tensor:
        try:
            import onnxruntime as ort
        except ImportError:
            if not self.config.check_with_onnxruntime:
                return None
            raise HgltrError("onnxruntime is not installed, so the ONNX parity check cannot run.",
                             "pip install onnxruntime (or 'hgltr[export]'), or --option check_with_onnxruntime=false "
                             "to export unchecked.") from None
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(safe_join(out_dir, graph["file"])), opts, providers=["CPUExecutionProvider"])
        out = sess.run(["logits"], {"images": images.detach().cpu().float().numpy()})[0]
        return torch.from_numpy(out)


@hookimpl
def register_exporters(register):
    register("onnx", OnnxExporter, config=OnnxConfig,
             description="Bundle + ONNX graph model.onnx (normalised images -> logits), checked with onnxruntime")
