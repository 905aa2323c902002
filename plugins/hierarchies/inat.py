"""iNaturalist taxonomy from the dataset's own `categories.json` (2018, 2019, 2021).

2018/2019: a list of {id, name, kingdom, phylum, class, order, family, genus, ...};
2021: the same keys inside train.json/val.json's "categories" (a file holding a dict with a
"categories" list is accepted). Seven levels below the root: kingdom .. genus, then the
species (the class). Class ids are the category ids (the labels), display names the
category names; without a class list the order is by category id.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hgltr_cli import hookimpl
from hgltr_cli.errors import HgltrError
from hgltr_cli.hierarchy import Hierarchy

LEVELS = ["kingdom", "phylum", "class", "order", "family", "genus"]


@dataclass
class INatOptions:
    categories: Optional[str] = None  # categories.json (or train.json of iNat 2021)
    levels: list[str] = field(default_factory=lambda: list(LEVELS))
    name_key: str = "name"  # 2021 also has "common_name"


def load_categories(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise HgltrError(f"iNat categories file {str(p)!r} does not exist.",
                         "It ships with the dataset: categories.json (2018/2019) or train.json (2021).")
    text = p.read_text(encoding="utf-8")
    if not text.strip():
        raise HgltrError(f"iNat categories file {str(p)!r} is empty.")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise HgltrError(f"iNat categories file {str(p)!r} is malformed JSON: {exc}.") from None
    cats = data.get("categories") if isinstance(data, dict) else data
    if not isinstance(cats, list) or not cats or not all(isinstance(c, dict) for c in cats):
        raise HgltrError(f"iNat categories file {str(p)!r} holds no list of categories.",
                         "Expected a list of {id, name, kingdom, ..., genus} objects (or a dict with 'categories').")
    return cats


def build(options: INatOptions | None, classes: list[str] | None = None) -> Hierarchy:
    opts = options or INatOptions()
    if not opts.categories:
        raise HgltrError("the inat source needs the dataset's categories file.", "Pass --categories categories.json.")
    cats = load_categories(opts.categories)
    required = ["id", opts.name_key, *opts.levels]
    bad = [(i, [k for k in required if k not in c or c[k] in (None, "")]) for i, c in enumerate(cats)]
    bad = [(i, m) for i, m in bad if m]
    if bad:
        shown = "; ".join(f"entry {i}: {', '.join(m)}" for i, m in bad[:5])
        raise HgltrError(f"iNat categories file: {len(bad)} categor(y/ies) lack required keys ({shown}"
                         + (" ..." if len(bad) > 5 else "") + ").", f"Every category needs {', '.join(required)}.")
    cats = sorted(cats, key=lambda c: int(c["id"]))
    # node id = level:name; a homonym (same level and name under another parent) gets its parent's id appended
    parent_of: dict[str, str] = {}
    nodes: dict[str, str] = {}
    rows = []
    for c in cats:
        path, parent = ["root"], "root"
        for level in opts.levels:
            name = str(c[level]).strip()
            nid = f"{level}:{name}"
            if parent_of.setdefault(nid, parent) != parent:
                nid = f"{level}:{name}@{parent}"
                parent_of.setdefault(nid, parent)
            nodes[nid] = name
            path.append(nid)
            parent = nid
        cid = str(c["id"])
        path.append(cid)
        rows.append((cid, str(c[opts.name_key]), path))
    hier = Hierarchy.from_paths(rows, nodes=nodes, source="inat", source_version=Path(opts.categories).name,
                                rules={"dag": "tree", "levels": list(opts.levels) + ["species"]})
    return hier.align(classes, missing_hint=f"Classes are the category ids (or species names) of "
                      f"{opts.categories}; fix the class list (--classes).") if classes else hier


@hookimpl
def register_hierarchy_sources(register):
    register("inat", build, config=INatOptions,
             description="iNaturalist's categories.json (2018/2019/2021): kingdom .. genus, species")
