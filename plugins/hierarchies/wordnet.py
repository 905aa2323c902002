"""WordNet hierarchy source: classes as wnids (n02123045), synset names (tabby.n.01) or plain names.

Default rule (METHOD.md section 1), chosen to reproduce the authors' ImageNet tree: each
class keeps ONE path, its longest hypernym path to `entity`; ties are broken by the parent
synset's name (never by nltk's hypernym_paths() order, which changes with PYTHONHASHSEED).
Because the choice at a synset depends only on that synset, the chosen paths form a tree.
Then WordNet's top levels (entity, physical_entity, abstraction, object, whole,
living_thing) are cut: pairs that meet only there get H = +inf.
`dag_rule=all-paths` keeps every hypernym path (H = closest common ancestor over all of them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from hgltr_cli import hookimpl
from hgltr_cli.errors import HgltrError, close_matches
from hgltr_cli.hierarchy import Hierarchy

DEFAULT_CUT = ["entity.n.01", "physical_entity.n.01", "abstraction.n.06", "object.n.01", "whole.n.02",
               "living_thing.n.01"]
WNID = re.compile(r"^([nvasr])(\d{8})$")
SYNSET_NAME = re.compile(r"^.+\.[nvasr]\.\d+$")
MAPPING_HINT = ("Pin each such class to one synset in a mapping file (one `CLASS<TAB>SYNSET` per line, "
                "SYNSET a synset name like apple.n.01 or a wnid like n07739125; YAML/JSON mappings work too) "
                "and pass it with --mapping FILE (config key source.mapping).")


@dataclass
class WordNetOptions:
    dag_rule: Literal["longest-path", "shortest-path", "all-paths"] = "longest-path"
    cut: list[str] = field(default_factory=lambda: list(DEFAULT_CUT))  # [] roots everything at entity
    mapping: Optional[str] = None  # CLASS -> synset file for plain or ambiguous names
    wordnet_dir: str = "/usr/share/wordnet"
    cache_dir: Optional[str] = None


def wnid(synset) -> str:
    """ImageNet-style id of a WordNet 3.0 synset: pos letter + 8-digit offset."""
    return f"{synset.pos().replace('s', 'a')}{synset.offset():08d}"


def display(synset) -> str:
    return synset.lemma_names()[0].replace("_", " ")


def read_mapping(path: str | Path) -> dict[str, str]:
    """CLASS -> synset from a TSV/CSV (`class<TAB>synset`) or a YAML/JSON mapping."""
    p = Path(path)
    if not p.is_file():
        raise HgltrError(f"mapping file {str(p)!r} does not exist.", MAPPING_HINT)
    text = p.read_text(encoding="utf-8-sig")
    if p.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise HgltrError(f"mapping file {str(p)!r} is malformed: {exc}.") from None
        if not isinstance(data, dict):
            raise HgltrError(f"mapping file {str(p)!r} must be a mapping CLASS: SYNSET.", MAPPING_HINT)
        return {str(k): str(v) for k, v in data.items()}
    sep = "," if p.suffix.lower() == ".csv" else "\t"
    out: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [s.strip() for s in line.split(sep)]
        if len(parts) != 2 or not all(parts):
            raise HgltrError(f"mapping file {str(p)!r} line {lineno}: expected `CLASS{sep!r}SYNSET`, got {line!r}.",
                             MAPPING_HINT)
        out[parts[0]] = parts[1]
    return out


class WordNetTree:
    """Deterministic hypernym paths over nltk's WordNet reader."""

    def __init__(self, wn, dag_rule: str = "longest-path", cut: list[str] | None = None):
        self.wn = wn
        self.dag_rule = dag_rule
        self.cut = {self._synset_or_error(c, "cut") for c in (DEFAULT_CUT if cut is None else cut)}

    def _synset_or_error(self, name: str, what: str):
        try:
            return self.lookup(name)
        except Exception:  # noqa: BLE001
            raise HgltrError(f"{what}: {name!r} is not a WordNet synset.", "Use synset names such as entity.n.01.") from None

    def lookup(self, key: str):
        m = WNID.match(key)
        if m:
            import warnings

            with warnings.catch_warnings():  # nltk warns and returns None for an unknown offset
                warnings.simplefilter("ignore")
                found = self.wn.synset_from_pos_and_offset(m.group(1), int(m.group(2)))
            if found is None:
                raise LookupError(key)
            return found
        return self.wn.synset(key)

    @staticmethod
    def parents(s) -> list:
        return sorted(set(s.hypernyms() + s.instance_hypernyms()), key=lambda p: p.name())

    def chosen_path(self, s) -> list:
        """Root-first synsets along the longest (or shortest) path; tie -> parent name order."""
        path = [s]
        seen = {s}
        longest = self.dag_rule != "shortest-path"
        while True:
            ps = self.parents(path[-1])
            if not ps:
                break
            if longest:
                nxt = min(ps, key=lambda p: (-p.max_depth(), p.name()))
            else:
                nxt = min(ps, key=lambda p: (p.min_depth(), p.name()))
            if nxt in seen:
                raise HgltrError(f"cycle in WordNet's hypernyms at {nxt.name()}.")
            seen.add(nxt)
            path.append(nxt)
        return path[::-1]

    def all_paths(self, s) -> list[list]:
        """Every root-first hypernym path, sorted by synset names (order-independent)."""
        memo: dict = {}

        def up(x, stack):
            if x in stack:
                raise HgltrError(f"cycle in WordNet's hypernyms at {x.name()}.")
            if x in memo:
                return memo[x]
            ps = self.parents(x)
            res = [[x]] if not ps else [p + [x] for q in ps for p in up(q, stack | {x})]
            memo[x] = res
            return res

        return sorted(up(s, frozenset()), key=lambda p: [n.name() for n in p])

    def paths(self, s) -> list[list]:
        raw = self.all_paths(s) if self.dag_rule == "all-paths" else [self.chosen_path(s)]
        out, seen = [], set()
        for p in raw:
            kept = tuple(n for n in p if n not in self.cut or n == s)
            if kept not in seen:
                seen.add(kept)
                out.append(list(kept))
        return out


def resolve_classes(wn, keys: list[str], mapping: dict[str, str]) -> list[tuple[str, object, str | None]]:
    """(key, synset, display name if the key was a plain name); all failures reported at once."""
    resolved, unknown, ambiguous = [], [], []
    lemma_pool = None
    tree = WordNetTree(wn, cut=[])
    for key in keys:
        target = mapping.get(key, key)
        try:
            if WNID.match(target) or SYNSET_NAME.match(target):
                resolved.append((key, tree.lookup(target), key if key in mapping else None))
                continue
        except Exception:  # noqa: BLE001 - nltk raises WordNetError / ValueError / KeyError
            unknown.append(f"{key!r}" + (f" (mapped to {target!r})" if key in mapping else "") + ": no such synset")
            continue
        cands = wn.synsets(target.replace(" ", "_"), pos="n")
        if len(cands) == 1:
            resolved.append((key, cands[0], key))
        elif cands:
            listed = "; ".join(f"{c.name()} [{wnid(c)}] {c.definition()[:60]}" for c in cands[:8])
            ambiguous.append(f"{key!r} matches {len(cands)} synsets: {listed}")
        else:
            if lemma_pool is None:
                lemma_pool = sorted(wn.all_lemma_names(pos="n"))
            word = target.replace(" ", "_").lower()
            pool = [w for w in lemma_pool if w[:1] == word[:1]]
            near = [w.replace("_", " ") for w in close_matches(word, pool)]
            unknown.append(f"{key!r}: not in WordNet" + (f" (close: {', '.join(near)})" if near else ""))
    if unknown or ambiguous:
        parts = []
        if unknown:
            parts.append(f"{len(unknown)} unknown class(es):\n  " + "\n  ".join(unknown))
        if ambiguous:
            parts.append(f"{len(ambiguous)} ambiguous class name(s):\n  " + "\n  ".join(ambiguous))
        raise HgltrError("WordNet could not resolve every class.\n" + "\n".join(parts), MAPPING_HINT)
    by_synset: dict = {}
    for key, s, _ in resolved:
        by_synset.setdefault(s, []).append(key)
    dup = [f"{', '.join(map(repr, ks))} -> {s.name()}" for s, ks in by_synset.items() if len(ks) > 1]
    if dup:
        raise HgltrError("duplicate class: several classes resolve to the same synset: " + "; ".join(dup) + ".",
                         MAPPING_HINT)
    return resolved


def build(options: WordNetOptions | None, classes: list[str] | None = None) -> Hierarchy:
    """Hierarchy of `classes` (label order) from WordNet 3.0; node ids are wnids."""
    from hgltr_cli.hierarchy.wordnet_data import get_wordnet

    opts = options or WordNetOptions()
    if not classes:
        raise HgltrError("the wordnet source needs the class list.",
                         "Pass --classes FILE (one wnid, synset name or plain name per line, in label order).")
    wn = get_wordnet(opts.cache_dir, opts.wordnet_dir)
    mapping = read_mapping(opts.mapping) if opts.mapping else {}
    tree = WordNetTree(wn, opts.dag_rule, opts.cut)
    rows, nodes = [], {}
    for key, synset, given in resolve_classes(wn, list(classes), mapping):
        paths = []
        for p in tree.paths(synset):
            for n in p[:-1]:
                nodes[wnid(n)] = display(n)
            paths.append(["root"] + [wnid(n) for n in p])
        rows.append((wnid(synset), given or display(synset), paths))
    rules = {"dag": opts.dag_rule, "tie_break": "parent synset name", "cut": sorted(s.name() for s in tree.cut),
             "instance_hypernyms": True}
    return Hierarchy.from_paths(rows, nodes=nodes, source="wordnet", source_version=f"WordNet {wn.get_version()}",
                                rules=rules)


@hookimpl
def register_hierarchy_sources(register):
    register("wordnet", build, config=WordNetOptions,
             description="WordNet 3.0 hypernyms of wnids, synset names or plain names (offline via Debian's WordNet)")
