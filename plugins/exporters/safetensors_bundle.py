"""`safetensors`: the plain bundle — weights (PEFT merged where possible) in safetensors, class names,
hierarchy and preprocessing in JSON. `hgltr predict BUNDLE` and any Python with torch + open_clip
load it without unpickling anything; its parity check reloads it and compares with the run's model.
"""
from __future__ import annotations

from dataclasses import dataclass

from hgltr_cli import hookimpl
from hgltr_cli.exporting import Exporter


@dataclass
class SafetensorsBundleConfig:
    tolerance: float = 1e-4  # max abs logit difference between the reloaded bundle and the run's model
    merge_peft: bool = True  # fold mergeable PEFT modules (LoRA) into the backbone weights

    def validate(self) -> None:
        if not self.tolerance >= 0:
            raise ValueError("tolerance must be >= 0")


class SafetensorsBundleExporter(Exporter):
    format = "safetensors"
    # the bundle core (weights, hierarchy, manifest) is written for every format; nothing to add


@hookimpl
def register_exporters(register):
    register("safetensors", SafetensorsBundleExporter, config=SafetensorsBundleConfig,
             description="Bundle of safetensors weights + class names, hierarchy, preprocessing (what predict loads)")
