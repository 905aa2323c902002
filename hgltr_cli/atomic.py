"""Atomic file writes: a temporary file beside the target, fsynced, then renamed onto it.

A reader (or a crash) never sees a half-written file. Torch-free, so hierarchy files, run metadata
and checkpoints share one writer. The fsync helpers are looked up on this module at call time:
tests/reliability/slow_writer.py wraps them to hold a write open at each stage.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable


def fsync_dir(path: str | Path) -> None:
    """Persist a folder's entries (a rename inside it); best effort where folders cannot be opened."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Persist a file's bytes before it is renamed into place."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write_file(path: str | Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file beside `path`; it is fsynced and renamed onto `path`
    (never a half-written file), or removed if anything fails."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # builtins.open: the fault-injection tests intercept it
            f.write(data)

    atomic_write_file(path, write)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Indented JSON, written atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode("utf-8"))
