"""Class-list files: the dataset's label order, one class per line.

A line is `CLASS` or `CLASS<TAB>display name` (also `CLASS,display name` in .csv files);
blank lines and lines starting with '#' are skipped. The order of the lines is the label
order and always wins over the taxonomy's own order.
"""
from __future__ import annotations

from pathlib import Path

from hgltr_cli.errors import HgltrError


def read_class_list(path: str | Path) -> tuple[list[str], list[str | None]]:
    """(class keys, display names or None) in file order; duplicates and empty files are errors."""
    p = Path(path)
    if not p.is_file():
        raise HgltrError(f"class list {str(p)!r} does not exist.", "Give a text file with one class per line.")
    try:
        lines = p.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError:
        raise HgltrError(f"class list {str(p)!r} is not a UTF-8 text file.") from None
    sep = "," if p.suffix.lower() == ".csv" else "\t"
    keys: list[str] = []
    names: list[str | None] = []
    first: dict[str, int] = {}
    dups = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, name = line.partition(sep)
        key, name = key.strip(), name.strip()
        if not key:
            raise HgltrError(f"class list {str(p)!r} line {lineno}: empty class before the separator.")
        if key in first:
            dups.append(f"{key!r} (lines {first[key]} and {lineno})")
            continue
        first[key] = lineno
        keys.append(key)
        names.append(name or None)
    if dups:
        raise HgltrError(f"duplicate class in {str(p)!r}: {', '.join(dups)}.", "Each class may appear once.")
    if not keys:
        raise HgltrError(f"class list {str(p)!r} is empty.", "Give one class per line, in label order.")
    return keys, names
