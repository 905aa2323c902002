"""Hand-written taxonomy files (`--taxonomy FILE`).

Formats (auto-detected, or `format=`):
* tree: YAML/JSON nested mapping; keys are nodes, leaves are the classes (a list of class
  names, or keys with null values). The same name twice is the same node, which is how a
  node gets several parents (a DAG).
* table: CSV/TSV with a header, one row per class, one column per level, root side first,
  the class in the last non-empty cell. A class on several rows has several parents.
* paths: YAML/JSON `{paths: {CLASS: [ancestor, ..., parent] | [[...], [...]]}}`.
* places365: Places365's official scene-hierarchy table (scene_hierarchy_places365.csv):
  two header lines, then `'/a/airfield',0,0,1,0,...` rows with one 0/1 flag column per
  level-1 category (indoor; outdoor, natural; outdoor, man-made) then per level-2 category.
Without a class list the classes are the taxonomy's leaves in file order.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from hgltr_cli import hookimpl
from hgltr_cli.errors import HgltrError
from hgltr_cli.hierarchy import DAG_RULES, Hierarchy

FORMATS = ("auto", "tree", "table", "paths", "places365")


@dataclass
class FileOptions:
    taxonomy: Optional[str] = None
    format: Literal["auto", "tree", "table", "paths", "places365"] = "auto"
    dag_rule: Literal["all-paths", "longest-path", "shortest-path"] = "all-paths"
    places_level1: int = 3  # places365: how many flag columns are level 1 (the rest are level 2)
    places_groups: Optional[list[int]] = None  # places365: level-2 columns per level-1 category, e.g. [6, 4, 6]


def _read_text(p: Path) -> str:
    if not p.is_file():
        raise HgltrError(f"taxonomy file {str(p)!r} does not exist.", "Pass --taxonomy FILE.")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise HgltrError(f"taxonomy file {str(p)!r} is not UTF-8 text.") from None
    if not text.strip():
        raise HgltrError(f"taxonomy file {str(p)!r} is empty.", "Write the taxonomy into it (see docs/hierarchy.md).")
    return text


def _load_yaml(p: Path, text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise HgltrError(f"taxonomy file {str(p)!r} is malformed{where}: {getattr(exc, 'problem', exc)}.") from None


def _tree_paths(data: Any, where: str) -> dict[str, list[list[str]]]:
    """Leaf -> root-first ancestor lists from a nested mapping."""
    out: dict[str, list[list[str]]] = {}

    def walk(node: Any, trail: list[str]) -> None:
        if isinstance(node, dict):
            if not node and trail:
                raise HgltrError(f"{where}: node {trail[-1]!r} has an empty mapping; give it children or null.")
            for key, child in node.items():
                name = str(key).strip()
                if not name:
                    raise HgltrError(f"{where}: empty node name under {' > '.join(trail) or 'the root'}.")
                if name in trail:
                    raise HgltrError(f"cycle in {where}: {' > '.join(trail[trail.index(name):] + [name])}.")
                if child is None:
                    out.setdefault(name, []).append(list(trail))
                else:
                    walk(child, trail + [name])
        elif isinstance(node, list):
            for item in node:
                if isinstance(item, (dict, list)):
                    walk(item, trail)
                elif item is None or not str(item).strip():
                    raise HgltrError(f"{where}: empty class name under {' > '.join(trail)}.")
                else:
                    name = str(item).strip()
                    if name in trail:
                        raise HgltrError(f"cycle in {where}: {' > '.join(trail[trail.index(name):] + [name])}.")
                    out.setdefault(name, []).append(list(trail))
        else:
            raise HgltrError(f"{where}: expected a mapping or a list under {' > '.join(trail) or 'the root'}, "
                             f"got {node!r}.", "Leaves are lists of class names or keys with null values.")

    if not isinstance(data, (dict, list)) or not data:
        raise HgltrError(f"{where} must hold a nested mapping of nodes (got {type(data).__name__}).")
    walk(data, [])
    return out


def _paths_format(data: Any, where: str) -> dict[str, list[list[str]]]:
    paths = data.get("paths") if isinstance(data, dict) else None
    if not isinstance(paths, dict) or not paths:
        raise HgltrError(f"{where}: the paths format needs a top-level `paths:` mapping CLASS -> ancestors.")
    out: dict[str, list[list[str]]] = {}
    for cls, val in paths.items():
        if isinstance(val, list) and all(isinstance(v, list) for v in val) and val:
            plist = val
        elif isinstance(val, list):
            plist = [val]
        else:
            raise HgltrError(f"{where}: class {cls!r} needs a list of ancestors (root side first), got {val!r}.")
        out[str(cls)] = [[str(n) for n in p] for p in plist]
    return out


def _sniff_rows(text: str, p: Path) -> list[list[str]]:
    delim = "\t" if p.suffix.lower() in (".tsv", ".tab") or ("\t" in text.splitlines()[0]) else ","
    return [[c.strip() for c in row] for row in csv.reader(io.StringIO(text), delimiter=delim)]


def _table_format(rows: list[list[str]], where: str) -> dict[str, list[list[str]]]:
    rows = [r for r in rows if any(r)]
    if len(rows) < 2:
        raise HgltrError(f"{where}: a table needs a header row and at least one class row.")
    header = rows[0]
    if len(header) < 1 or not all(header):
        raise HgltrError(f"{where}: wrong columns: the header {header} has empty column names.",
                         "Header: one column per level, root side first, e.g. `superclass,class`.")
    out: dict[str, list[list[str]]] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if len(row) != len(header):
            raise HgltrError(f"{where} row {lineno}: wrong columns: {len(row)} cells for {len(header)} header "
                             f"columns ({', '.join(header)}).", "Every row needs one cell per level (empty cells at the end are allowed).")
        cells = list(row)
        while cells and not cells[-1]:
            cells.pop()
        if not cells or any(not c for c in cells):
            raise HgltrError(f"{where} row {lineno}: a level is empty in the middle of the path: {row}.")
        out.setdefault(cells[-1], []).append(cells[:-1])
    return out


def _contiguous_groups(table, n1: int, n2: int) -> list[int]:
    """Level-1 parent of each level-2 column: the official table lists level-2 columns grouped
    by level-1 category, so the columns are split into n1 contiguous non-empty runs that
    maximise how often a scene flags both a column and its run's level-1 category (DP)."""
    score = [[sum(1 for _, f1, f2 in table if f2[j] and f1[g]) for g in range(n1)] for j in range(n2)]
    neg = float("-inf")
    best = [[neg] * n1 for _ in range(n2)]
    back = [[0] * n1 for _ in range(n2)]
    for j in range(n2):
        for g in range(n1):
            if j == 0:
                best[j][g] = score[0][0] if g == 0 else neg
                continue
            stay, move = best[j - 1][g], best[j - 1][g - 1] if g else neg
            prev = g if stay >= move else g - 1
            if best[j - 1][prev] > neg:
                best[j][g] = best[j - 1][prev] + score[j][g]
                back[j][g] = prev
    g = n1 - 1 if n2 >= n1 else max(range(n1), key=lambda x: best[n2 - 1][x])
    parent = [0] * n2
    for j in range(n2 - 1, -1, -1):
        parent[j] = g
        g = back[j][g]
    return parent


def _places365(rows: list[list[str]], where: str, n_level1: int,
               groups: list[int] | None = None) -> tuple[dict[str, list[list[str]]], list[str]]:
    """Scene -> [[level1, level2], ...] from the official 0/1 flag table."""
    def is_flags(r):
        return len(r) > 1 and r[0] and all(c in ("0", "1", "") for c in r[1:]) and "1" in r[1:]

    start = next((i for i, r in enumerate(rows) if is_flags(r)), None)
    if start is None or start == 0:
        raise HgltrError(f"{where}: not a Places365 scene-hierarchy table (no header row followed by rows of "
                         "`'/a/scene',0,1,...` flags).", "Use the official scene_hierarchy_places365.csv as downloaded.")
    names = rows[start - 1]
    ncols = len(names)
    flags_cols = ncols - 1
    if flags_cols <= n_level1:
        raise HgltrError(f"{where}: wrong columns: {flags_cols} flag columns, but {n_level1} are level 1 and "
                         "at least one level-2 column is needed.")
    l1 = [c or f"level1-{i}" for i, c in enumerate(names[1:1 + n_level1])]
    l2 = [c or f"level2-{i}" for i, c in enumerate(names[1 + n_level1:])]
    table = []
    for lineno, r in enumerate(rows[start:], start + 1):
        if not any(r):
            continue
        if len(r) != ncols or not is_flags(r):
            raise HgltrError(f"{where} row {lineno}: wrong columns: expected a scene and {flags_cols} 0/1 flags, got {r}.")
        scene = r[0].strip().strip("'\"")
        table.append((scene, [c == "1" for c in r[1:1 + n_level1]], [c == "1" for c in r[1 + n_level1:]]))
    if groups:
        if len(groups) != len(l1) or sum(groups) != len(l2) or min(groups) < 1:
            raise HgltrError(f"{where}: places_groups {groups} must give one positive count per level-1 column "
                             f"({len(l1)}) summing to the {len(l2)} level-2 columns.")
        parent = [g for g, n in enumerate(groups) for _ in range(n)]
    else:
        parent = _contiguous_groups(table, len(l1), len(l2))
    out: dict[str, list[list[str]]] = {}
    for scene, f1, f2 in table:
        paths = [[l1[parent[j]], l2[j]] for j in range(len(l2)) if f2[j]]
        covered = {parent[j] for j in range(len(l2)) if f2[j]}
        paths += [[l1[i]] for i in range(len(l1)) if f1[i] and i not in covered]
        out.setdefault(scene, []).extend(paths)
    return out, l1 + l2


def parse_taxonomy(path: str | Path, fmt: str = "auto", places_level1: int = 3,
                   places_groups: list[int] | None = None) -> dict[str, list[list[str]]]:
    """class -> list of root-first ancestor lists (root itself not included), in file order."""
    p = Path(path)
    text = _read_text(p)
    where = f"taxonomy file {str(p)!r}"
    suffix = p.suffix.lower()
    if fmt == "auto":
        if suffix in (".csv", ".tsv", ".tab", ".txt"):
            rows = _sniff_rows(text, p)
            flagged = sum(1 for r in rows if len(r) > 2 and r[0] and all(c in ("0", "1", "") for c in r[1:]))
            fmt = "places365" if flagged >= max(1, len(rows) // 2) else "table"
        else:
            data = _load_yaml(p, text)
            fmt = "paths" if isinstance(data, dict) and set(data) == {"paths"} else "tree"
    if fmt in ("table", "places365"):
        rows = _sniff_rows(text, p)
        return _table_format(rows, where) if fmt == "table" else _places365(rows, where, places_level1, places_groups)[0]
    data = _load_yaml(p, text)
    return _paths_format(data, where) if fmt == "paths" else _tree_paths(data, where)


def choose_paths(paths: list[list[str]], rule: str) -> list[list[str]]:
    """Apply the DAG rule: keep all paths, or the longest/shortest (ties: first in file order)."""
    if rule == "all-paths" or len(paths) <= 1:
        return paths
    pick = max if rule == "longest-path" else min
    best = pick(len(p) for p in paths)
    return [next(p for p in paths if len(p) == best)]


def _root_id(tax: dict[str, list[list[str]]]) -> str:
    """Id of the implicit root: 'root', unless the taxonomy names a node or class 'root'. Node ids
    are the names themselves, so sharing the id would make that node its own ancestor (a "cycle")."""
    used = set(tax) | {n for paths in tax.values() for p in paths for n in p}
    root = "root"
    while root in used:
        root = f"<{root}>"
    return root


def build(options: FileOptions | None, classes: list[str] | None = None) -> Hierarchy:
    opts = options or FileOptions()
    if not opts.taxonomy:
        raise HgltrError("the file source needs a taxonomy file.", "Pass --taxonomy FILE (YAML/JSON tree, CSV/TSV table).")
    if opts.dag_rule not in DAG_RULES:
        raise HgltrError(f"unknown dag_rule {opts.dag_rule!r}.", f"Use one of {', '.join(DAG_RULES)}.")
    tax = parse_taxonomy(opts.taxonomy, opts.format, opts.places_level1, opts.places_groups)
    root = _root_id(tax)
    leaves = list(tax)
    rows = []
    for cls in leaves:
        uniq = []
        for p in tax[cls]:
            if p not in uniq:
                uniq.append(p)
        rows.append((cls, cls.replace("_", " "), [[root, *p, cls] for p in choose_paths(uniq, opts.dag_rule)]))
    hier = Hierarchy.from_paths(rows, root=root, source="file", source_version=Path(opts.taxonomy).name,
                                rules={"dag": opts.dag_rule, "format": opts.format, "node_identity": "name"})
    return hier.align(classes, missing_hint=f"Add each class to {opts.taxonomy} as a leaf, or fix its spelling in "
                      "the class list (--classes).") if classes else hier


@hookimpl
def register_hierarchy_sources(register):
    register("file", build, config=FileOptions,
             description="A hand-written taxonomy: YAML/JSON tree, CSV/TSV level table, path lists, Places365 table")
