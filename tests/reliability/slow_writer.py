"""`python slow_writer.py ARGS...` = `hgltr ARGS...` with the checkpoint writer held open in its windows.

The kill tests need to land a signal *inside* a checkpoint write, which normally lasts a few
milliseconds. This wrapper patches hgltr_cli.atomic's fsync helpers (called at each
stage of a write) so that, at each stage, it appends a marker line to $HGLTR_FAULT_LOG and
sleeps $HGLTR_FAULT_PAUSE seconds. The stages of one checkpoint, in order:

    partial   NAME's tmp folder holds model.safetensors only (optimizer and state not yet written)
    complete  the tmp folder is complete and fsynced, not yet renamed to NAME
    renamed   NAME is in place; index.json still names the previous checkpoint
    indexed   index.json names NAME; older checkpoints not yet pruned

Nothing else changes: the same CLI entry point, the same code paths and files.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def install(log: str, pause: float) -> None:
    from hgltr_cli import atomic
    from hgltr_cli.engine import checkpoint as ck

    real_fsync_dir, real_fsync_file = atomic.fsync_dir, atomic.fsync_file
    state = {"after_tmp": 0}

    def mark(stage: str, path) -> None:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"{stage} {path}\n")
            f.flush()
        time.sleep(pause)

    def fsync_file(path):
        real_fsync_file(path)
        p = Path(path)
        if p.name == ck.MODEL_FILE and p.parent.name.startswith(".tmp-"):
            mark("partial", p.parent)

    def fsync_dir(path):
        real_fsync_dir(path)
        p = Path(path)
        if p.name.startswith(".tmp-"):
            state["after_tmp"] = 1
            mark("complete", p)
        elif p.name == "checkpoints" and state["after_tmp"] == 1:
            state["after_tmp"] = 2
            mark("renamed", p)
        elif p.name == "checkpoints" and state["after_tmp"] == 2:
            state["after_tmp"] = 0
            mark("indexed", p)

    atomic.fsync_file = fsync_file
    atomic.fsync_dir = fsync_dir


if __name__ == "__main__":
    install(os.environ["HGLTR_FAULT_LOG"], float(os.environ.get("HGLTR_FAULT_PAUSE", "0.3")))
    from hgltr_cli.cli import main

    sys.argv[0] = "hgltr"
    main(sys.argv[1:])
