"""`hgltr train`: resolve the config and hand it to the engine."""
from __future__ import annotations

from typing import Annotated, Optional

import typer

from hgltr_cli.commands.common import ConfigOpt, PrintConfigOpt, SetOpt, print_config_and_exit, resolve_config
from hgltr_cli.console import user_errors
from hgltr_cli.errors import NotBuiltYet

# CLI flag -> config key: each flag is only a shorthand, so --print-config re-runs the same job.
SHORTHANDS = {
    "dataset": "dataset.name", "data_root": "dataset.root", "hierarchy": "hierarchy.file",
    "model": "model.name", "pretrained": "model.pretrained", "peft": "peft.name", "loss": "loss.name",
    "epochs": "train.epochs", "batch_size": "train.batch_size", "seed": "train.seed", "output": "train.output",
}


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
        batch_size: Annotated[Optional[int], typer.Option(help="Global batch size.")] = None,
        seed: Annotated[Optional[int], typer.Option(help="Random seed.")] = None,
        output: Annotated[Optional[str], typer.Option(help="Run directory to write.")] = None,
        config: ConfigOpt = None,
        set_: SetOpt = None,
        print_config: PrintConfigOpt = False,
    ):
        """Fine-tune CLIP with a PEFT method and the HGLTR losses; writes a run directory."""
        from hgltr_cli.settings import TrainConfig

        values = dict(dataset=dataset, data_root=data_root, hierarchy=hierarchy, model=model, pretrained=pretrained,
                      peft=peft, loss=loss, epochs=epochs, batch_size=batch_size, seed=seed, output=output)
        resolved = resolve_config(TrainConfig, config=config, sets=set_,
                                  shorthands={SHORTHANDS[k]: v for k, v in values.items()})
        if print_config:
            print_config_and_exit(resolved)
        raise NotBuiltYet("`hgltr train` is not built yet: the training engine has not landed.",
                          "Track it in the project's issues; `--print-config` already shows the resolved config.")
