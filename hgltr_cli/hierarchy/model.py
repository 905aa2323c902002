"""The Hierarchy: classes in label order, each with its root-to-class path(s).

This is the one object the rest of hgltr uses (DESIGN.md "Hierarchy file"): the model
engineer renders prompts from it, training derives H and S, evaluation uses H and the
top-level superclasses. It is immutable in spirit: `align` and `with_names` return copies.
"""
from __future__ import annotations

import hashlib
import json
import re
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from hgltr_cli.errors import HgltrError, close_matches

FORMAT = "hgltr-hierarchy"
FORMAT_VERSION = 1
DAG_RULES = ("all-paths", "longest-path", "shortest-path")

TEMPLATES = {
    # METHOD.md section 3: class name, then its ancestors nearest first, root excluded
    "paper": "a photo of a {name}({ancestors})",
    # what the authors' runs used: no hierarchy in the prompt
    "plain": "a photo of {name}",
}
TEMPLATE_FIELDS = ("name", "id", "ancestors", "parent", "path", "top")


@dataclass
class ClassEntry:
    """One class: its id (stable key), display name and root-first paths (first = primary)."""

    id: str
    name: str
    paths: list[list[str]]

    @property
    def path(self) -> list[str]:
        return self.paths[0]


def normalize_name(text: str) -> str:
    """Loose key for matching dataset class names to hierarchy classes.

    'Tiger_Cat' == 'tiger cat' == 'tiger-cat'; Places365's '/a/airfield' == 'airfield'.
    """
    t = str(text).strip().strip("'\"")
    t = re.sub(r"^/[a-z]/", "", t)
    t = t.replace("/", " ").replace("_", " ").replace("-", " ")
    return " ".join(t.casefold().split())


@dataclass
class Hierarchy:
    """Classes in label order with root-first node-id paths, plus node display names."""

    entries: list[ClassEntry]
    root: str = "root"
    nodes: dict[str, str] = field(default_factory=dict)  # node id -> display name
    source: str = "unknown"
    source_version: str = ""
    rules: dict[str, Any] = field(default_factory=dict)
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_paths(cls, classes: Sequence[tuple[str, str, Sequence[Sequence[str]]]], *, root: str = "root",
                   nodes: dict[str, str] | None = None, source: str = "unknown", source_version: str = "",
                   rules: dict[str, Any] | None = None) -> "Hierarchy":
        """Build from (class id, display name, paths) triples; each path is root-first and
        ends at the class id. A bare path (list of str) is accepted in place of a list of paths."""
        entries = []
        for cid, name, paths in classes:
            paths = list(paths)
            if paths and isinstance(paths[0], str):
                paths = [paths]
            entries.append(ClassEntry(str(cid), str(name), [list(map(str, p)) for p in paths]))
        return cls(entries, root=root, nodes=dict(nodes or {}), source=source, source_version=source_version,
                   rules=dict(rules or {}))

    def validate(self) -> None:
        """Duplicate classes, paths not starting at the root or not ending at their class,
        and cycles (a node that is its own ancestor) are user errors."""
        if not self.entries:
            raise HgltrError("the hierarchy has no classes.", "Give at least one class.")
        seen: dict[str, int] = {}
        dups = []
        for i, e in enumerate(self.entries):
            if e.id in seen:
                dups.append(f"{e.id!r} (positions {seen[e.id]} and {i})")
            seen.setdefault(e.id, i)
        if dups:
            raise HgltrError(f"duplicate class in the hierarchy: {', '.join(dups)}.",
                             "Each class may appear once in the class list; remove the repeated lines.")
        edges: dict[str, set[str]] = {}
        for e in self.entries:
            if not e.paths:
                raise HgltrError(f"class {e.id!r} has no path from the root.")
            for p in e.paths:
                if len(p) < 2 or p[0] != self.root or p[-1] != e.id:
                    raise HgltrError(f"class {e.id!r}: path {' > '.join(p)} must start at the root {self.root!r} "
                                     "and end at the class.")
                if len(set(p)) != len(p):
                    rep = [n for n, c in Counter(p).items() if c > 1]
                    raise HgltrError(f"cycle in the hierarchy: node {rep[0]!r} is its own ancestor "
                                     f"(path of class {e.id!r}: {' > '.join(p)}).", "Remove the edge that loops back.")
                for parent, child in zip(p, p[1:]):
                    edges.setdefault(parent, set()).add(child)
        cycle = _find_cycle(edges)
        if cycle:
            raise HgltrError(f"cycle in the hierarchy: {' > '.join(cycle)}.",
                             "A node cannot be an ancestor of itself; remove one of these edges.")

    # ------------------------------------------------------------------ basic views
    def __len__(self) -> int:
        return len(self.entries)

    @property
    def classes(self) -> list[str]:
        """Class ids in label order (e.g. WordNet ids 'n02123045')."""
        return [e.id for e in self.entries]

    @property
    def names(self) -> list[str]:
        """Display names in label order (what prompts use)."""
        return [e.name for e in self.entries]

    def node_name(self, node: str) -> str:
        """Display name of a node (a class's own name for class nodes)."""
        if node in self.nodes:
            return self.nodes[node]
        for e in self.entries:
            if e.id == node:
                return e.name
        return node

    def ancestor_ids(self, i: int) -> list[str]:
        """Node ids above class i on its primary path, nearest first, root excluded."""
        return list(reversed(self.entries[i].path[1:-1]))

    def ancestors(self, i: int) -> list[str]:
        """Display names above class i, nearest first, root excluded (the paper's prompt order)."""
        return [self.node_name(n) for n in self.ancestor_ids(i)]

    def top_level(self, i: int) -> str:
        """Name of class i's top-level superclass (first node below the root) for per-group plots."""
        p = self.entries[i].path
        return self.node_name(p[1])

    @property
    def is_tree(self) -> bool:
        """True when every class has one path and every node one parent."""
        if "is_tree" not in self._cache:
            parent: dict[str, str] = {}
            tree = True
            for e in self.entries:
                if len(e.paths) > 1:
                    tree = False
                    break
                for a, b in zip(e.path, e.path[1:]):
                    if parent.setdefault(b, a) != a:
                        tree = False
                        break
            self._cache["is_tree"] = tree
        return self._cache["is_tree"]

    @property
    def depths(self) -> list[int]:
        """Edge count root -> class along the primary path."""
        return [len(e.path) - 1 for e in self.entries]

    # ------------------------------------------------------------------ maths
    def distance_matrix(self, kind: str = "pair-depth"):
        """(K, K) torch.float32 LCA distances; +inf where the LCA is the root (METHOD.md 1).

        kind: 'pair-depth' (the authors') or 'lca-height' (Bertinetto et al.).
        """
        from hgltr_cli.hierarchy.distance import dag_distance, tree_distance

        key = ("H", kind)
        if key not in self._cache:
            index: dict[str, int] = {self.root: 0}
            for e in self.entries:
                for p in e.paths:
                    for n in p:
                        index.setdefault(n, len(index))
            if self.is_tree:
                h = tree_distance([[index[n] for n in e.path] for e in self.entries], kind)
            else:
                h = dag_distance([[[index[n] for n in p] for p in e.paths] for e in self.entries],
                                 len(index), 0, kind)
            self._cache[key] = h
        return self._cache[key].clone()

    def similarity(self, tau_s: float = 1.0, kind: str = "pair-depth"):
        """S = softmax(-tau_s * H) row-wise, exact zeros where H is +inf."""
        from hgltr_cli.hierarchy.distance import similarity

        return similarity(self.distance_matrix(kind), tau_s)

    # ------------------------------------------------------------------ prompts
    def prompts(self, template: str = "paper", max_ancestors: int | None = None) -> list[str]:
        """One prompt per class: 'paper', 'plain' or a format string with fields
        {name} (or {class}, {}) {id} {ancestors} {parent} {path} {top}. An empty ancestor list drops '()'."""
        fmt = TEMPLATES.get(template, template)
        # {class} and {} are aliases of {name}, as for plain class-name lists (model/text.py)
        fmt = re.sub(r"{class([:!}])", r"{name\1", fmt.replace("{}", "{name}"))
        used = set(re.findall(r"{(\w*)[^}]*}", fmt))
        bad = sorted(used - set(TEMPLATE_FIELDS))
        if bad or "{" not in fmt:
            raise HgltrError(
                f"prompt template {template!r} is neither a known template ({', '.join(TEMPLATES)}) nor a format "
                f"string with valid fields" + (f" (unknown: {', '.join(bad)})" if bad else "") + ".",
                f"Fields: {', '.join('{' + f + '}' for f in TEMPLATE_FIELDS)}; e.g. 'a photo of a {{name}}, a kind of {{parent}}.'")
        out = []
        for i, e in enumerate(self.entries):
            anc = self.ancestors(i)
            if max_ancestors is not None:
                anc = anc[:max_ancestors]
            values = dict(name=e.name, id=e.id, ancestors=", ".join(anc), parent=anc[0] if anc else "",
                          path=" > ".join(list(reversed(anc)) + [e.name]),
                          top=self.top_level(i))
            text = fmt.format(**values)
            if not anc:  # a class right under the root: no empty "()" in the prompt
                text = " ".join(text.replace("()", "").split())
            out.append(text)
        return out

    # ------------------------------------------------------------------ reordering
    def align(self, class_names: Iterable[str], missing_hint: str | None = None) -> "Hierarchy":
        """The hierarchy reordered (and subset) to a dataset's label order.

        Each name matches a class id, else a display name, else loosely (case, '_', '-',
        Places' '/a/' prefix). Every missing name is reported at once with close matches;
        `missing_hint` replaces the default fix (sources say how to add a class to *their* input).
        """
        wanted = [str(c) for c in class_names]
        by_id = {e.id: i for i, e in enumerate(self.entries)}
        by_name: dict[str, list[int]] = {}
        by_norm: dict[str, list[int]] = {}
        for i, e in enumerate(self.entries):
            by_name.setdefault(e.name, []).append(i)
            for key in {normalize_name(e.id), normalize_name(e.name)}:
                by_norm.setdefault(key, []).append(i)
        order, missing, ambiguous = [], [], []
        for w in wanted:
            if w in by_id:
                order.append(by_id[w])
            elif len(by_name.get(w, [])) == 1:
                order.append(by_name[w][0])
            elif len(set(by_norm.get(normalize_name(w), []))) == 1:
                order.append(by_norm[normalize_name(w)][0])
            elif len(set(by_name.get(w, []) or by_norm.get(normalize_name(w), []))) > 1:
                cands = sorted(set(by_name.get(w, []) or by_norm[normalize_name(w)]))
                ambiguous.append(f"{w!r} (matches {', '.join(self.entries[j].id for j in cands)})")
            else:
                missing.append(w)
        if missing:
            pool = [e.name for e in self.entries] + [e.id for e in self.entries]
            lines = []
            for w in missing:
                near = close_matches(w, pool)
                lines.append(f"  {w}" + (f"  (close: {', '.join(near)})" if near else ""))
            raise HgltrError(f"{len(missing)} class(es) missing from the hierarchy:\n" + "\n".join(lines),
                             missing_hint or "Fix the class names, or rebuild the hierarchy with these classes "
                             "(`hgltr build-hierarchy --classes FILE`).")
        if ambiguous:
            raise HgltrError("ambiguous class name(s): " + "; ".join(ambiguous) + ".",
                             "Use the class ids (the hierarchy file's `id` fields) in the class list.")
        dup = [self.entries[i].id for i, c in Counter(order).items() if c > 1] if len(set(order)) != len(order) else []
        if dup:
            raise HgltrError(f"the class list names the same hierarchy class twice: {', '.join(dup)}.")
        return self._replace([self.entries[i] for i in order])

    def with_names(self, names: Sequence[str | None]) -> "Hierarchy":
        """Copy with display names replaced where `names[i]` is not None."""
        ents = [ClassEntry(e.id, n if n else e.name, e.paths) for e, n in zip(self.entries, names)]
        return self._replace(ents)

    def _replace(self, entries: list[ClassEntry]) -> "Hierarchy":
        used = {n for e in entries for p in e.paths for n in p}
        return Hierarchy(entries, root=self.root, nodes={k: v for k, v in self.nodes.items() if k in used},
                         source=self.source, source_version=self.source_version, rules=dict(self.rules))

    def tree_order(self) -> list[int]:
        """Class indices ordered depth-first by their primary paths (siblings adjacent)."""
        first: dict[str, int] = {}
        for e in self.entries:
            for n in e.path:
                first.setdefault(n, len(first))
        return sorted(range(len(self.entries)), key=lambda i: [first[n] for n in self.entries[i].path])

    # ------------------------------------------------------------------ summary
    def summary(self, kind: str = "pair-depth") -> dict[str, Any]:
        """Classes, depth min/median/max, nodes per level, multi-path classes, share of +inf pairs."""
        import torch

        depths = self.depths
        per_level: dict[int, set[str]] = {}
        for e in self.entries:
            for p in e.paths:
                for d, n in enumerate(p):
                    per_level.setdefault(d, set()).add(n)
        h = self.distance_matrix(kind)
        k = len(self)
        off = k * (k - 1)
        inf_pairs = int(torch.isinf(h).sum())
        finite = h[torch.isfinite(h)]
        return {
            "classes": k,
            "depth_min": min(depths), "depth_median": float(statistics.median(depths)), "depth_max": max(depths),
            "nodes_per_level": [len(per_level[d]) for d in sorted(per_level)],
            "internal_nodes": len({n for e in self.entries for p in e.paths for n in p[1:-1]}),
            "multi_path_classes": sum(len(e.paths) > 1 for e in self.entries),
            "top_level": sorted(Counter(self.top_level(i) for i in range(k)).items(), key=lambda t: (-t[1], t[0])),
            "inf_pair_share": inf_pairs / off if off else 0.0,
            "max_finite_distance": float(finite.max()) if finite.numel() else 0.0,
            "distance": kind,
            "is_tree": self.is_tree,
        }

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict[str, Any]:
        classes = []
        for e in self.entries:
            item: dict[str, Any] = {"id": e.id, "name": e.name, "path": e.path}
            if len(e.paths) > 1:
                item["paths"] = e.paths
            classes.append(item)
        from hgltr_cli import __version__

        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "source": self.source, "source_version": self.source_version, "rules": self.rules,
            "created_by": f"hgltr {__version__}",
            "content_hash": self.content_hash,
            "root": self.root, "num_classes": len(self),
            "nodes": dict(sorted(self.nodes.items())),
            "classes": classes,
        }

    @property
    def content_hash(self) -> str:
        """sha256 of what H, S and the prompts derive from (root, classes with names and
        paths in order, node names); metadata such as the creating version is excluded."""
        if "hash" not in self._cache:
            used = {n for e in self.entries for p in e.paths for n in p}
            payload = {"root": self.root, "classes": [[e.id, e.name, e.paths] for e in self.entries],
                       "nodes": sorted((k, v) for k, v in self.nodes.items() if k in used)}
            blob = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
            self._cache["hash"] = "sha256:" + hashlib.sha256(blob).hexdigest()
        return self._cache["hash"]

    def to_text(self, path: str | Path) -> str:
        """The file text for `path`: YAML for .yaml/.yml, else compact JSON."""
        data = self.to_dict()
        if Path(path).suffix.lower() in (".yaml", ".yml"):
            import yaml

            return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        return _compact_json(data)

    def save(self, path: str | Path) -> Path:
        """Write JSON (or YAML for .yaml/.yml) through the shared atomic writer, so a failed write
        (full disk, no permission) leaves no partial or temp file; it is an HgltrError naming the file."""
        from hgltr_cli.atomic import atomic_write_bytes
        from hgltr_cli.rundir import write_error

        p = Path(path)
        data = self.to_text(p).encode("utf-8")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(p, data)
        except OSError as exc:
            raise write_error(exc, f"the hierarchy to {str(p)!r}", None) from None
        return p

    @classmethod
    def from_dict(cls, data: Any, where: str = "hierarchy") -> "Hierarchy":
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise HgltrError(f"{where} is not an hgltr hierarchy file (no \"format\": \"{FORMAT}\").",
                             "Create one with `hgltr build-hierarchy ... --output FILE.json`.")
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise HgltrError(f"{where} has format_version {data.get('format_version')}, newer than this hgltr "
                             f"understands ({FORMAT_VERSION}).", "Upgrade hgltr.")
        try:
            entries = [ClassEntry(str(c["id"]), str(c.get("name", c["id"])),
                                  [list(map(str, p)) for p in (c.get("paths") or [c["path"]])])
                       for c in data["classes"]]
        except (KeyError, TypeError) as exc:
            raise HgltrError(f"{where} is malformed: every class needs an `id` and a `path` ({exc}).") from None
        h = cls(entries, root=str(data.get("root", "root")), nodes={str(k): str(v) for k, v in (data.get("nodes") or {}).items()},
                source=str(data.get("source", "unknown")), source_version=str(data.get("source_version", "")),
                rules=dict(data.get("rules") or {}))
        stored = data.get("content_hash")
        if stored and stored != h.content_hash:
            raise HgltrError(f"{where}: content_hash does not match its content (stored {stored}, computed "
                             f"{h.content_hash}); the file was edited or damaged.",
                             "If the edit is intended, delete the `content_hash` line; hgltr recomputes it.")
        return h

    @classmethod
    def load(cls, path: str | Path) -> "Hierarchy":
        return load_hierarchy(path)


def load_hierarchy(path: str | Path) -> Hierarchy:
    """Read a hierarchy file written by `hgltr build-hierarchy` (JSON or YAML)."""
    p = Path(path)
    if not p.is_file():
        raise HgltrError(f"hierarchy file {str(p)!r} does not exist.",
                         "Build one with `hgltr build-hierarchy`, or use a shipped one in taxonomies/.")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise HgltrError(f"hierarchy file {str(p)!r} is not a UTF-8 text file.",
                         "Pass the JSON or YAML file written by `hgltr build-hierarchy`.") from None
    if not text.strip():
        raise HgltrError(f"hierarchy file {str(p)!r} is empty.")
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault
        raise HgltrError(f"hierarchy file {str(p)!r} is malformed: {exc}.") from None
    return Hierarchy.from_dict(data, where=f"hierarchy file {str(p)!r}")


def _compact_json(data: dict) -> str:
    """Indented JSON with each path on one line (readable diffs, files a few MB at most)."""
    classes = data["classes"]
    head = dict(data)
    head["classes"] = []
    text = json.dumps(head, indent=1, ensure_ascii=False)
    rows = ",\n  ".join(json.dumps(c, ensure_ascii=False) for c in classes)
    return text.replace('"classes": []', '"classes": [\n  ' + rows + "\n ]") + "\n"


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A node cycle in the parent->child graph, or None (iterative DFS, deterministic)."""
    white, grey, black = 0, 1, 2
    color: dict[str, int] = {}
    for start in sorted(edges):
        if color.get(start, white) != white:
            continue
        stack = [(start, iter(sorted(edges.get(start, ()))))]
        trail = [start]
        color[start] = grey
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                color[node] = black
                stack.pop()
                trail.pop()
                continue
            c = color.get(nxt, white)
            if c == grey:
                return trail[trail.index(nxt):] + [nxt]
            if c == white:
                color[nxt] = grey
                stack.append((nxt, iter(sorted(edges.get(nxt, ())))))
                trail.append(nxt)
    return None
