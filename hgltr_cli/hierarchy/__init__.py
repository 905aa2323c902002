"""Class hierarchies: files, LCA distances H, similarity S, prompts (METHOD.md 1-3).

    from hgltr_cli.hierarchy import load_hierarchy, similarity
    hier = load_hierarchy("hier.json").align(dataset.class_names)
    H = hier.distance_matrix("pair-depth")      # (K, K) float32, +inf at root LCA
    S = similarity(H, tau_s=1.0)                 # rows sum to 1, exact 0 where H = +inf
    prompts = hier.prompts("paper")              # "a photo of a tabby(domestic cat, cat, ...)"

Hierarchy sources (plugins) return a `Hierarchy` built with `Hierarchy.from_paths`.
"""
from hgltr_cli.hierarchy.classlist import read_class_list
from hgltr_cli.hierarchy.distance import KINDS as DISTANCE_KINDS
from hgltr_cli.hierarchy.distance import similarity
from hgltr_cli.hierarchy.model import (DAG_RULES, TEMPLATES, ClassEntry, Hierarchy, load_hierarchy,
                                       normalize_name)

__all__ = ["Hierarchy", "ClassEntry", "load_hierarchy", "similarity", "read_class_list", "normalize_name",
           "DISTANCE_KINDS", "DAG_RULES", "TEMPLATES"]
