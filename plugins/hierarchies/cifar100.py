"""CIFAR-100's official hierarchy: 20 superclasses ("coarse labels") over the 100 classes.

The class order is CIFAR-100's fine-label order (alphabetical, as in the dataset's `meta`
file); a `--classes` list reorders or subsets it. Two levels below the root.
"""
from __future__ import annotations

from dataclasses import dataclass

from hgltr_cli import hookimpl
from hgltr_cli.hierarchy import Hierarchy

# The dataset's meta file: coarse label name -> its five fine label names.
SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# prompts read better without the split's number
_DISPLAY = {"vehicles_1": "vehicles", "vehicles_2": "vehicles"}


@dataclass
class Cifar100Options:
    """The CIFAR-100 source has no options; the class list (if any) picks the order."""


def fine_label_names() -> list[str]:
    """The 100 fine labels in dataset label order (alphabetical)."""
    return sorted(c for fine in SUPERCLASSES.values() for c in fine)


def build(options: Cifar100Options | None, classes: list[str] | None = None) -> Hierarchy:
    parent = {c: sup for sup, fine in SUPERCLASSES.items() for c in fine}
    rows = [(c, c.replace("_", " "), ["root", f"super:{parent[c]}", c]) for c in fine_label_names()]
    nodes = {f"super:{s}": _DISPLAY.get(s, s.replace("_", " ")) for s in SUPERCLASSES}
    hier = Hierarchy.from_paths(rows, nodes=nodes, source="cifar100", source_version="CIFAR-100 (Krizhevsky 2009)",
                                rules={"dag": "tree", "levels": ["superclass", "class"]})
    return hier.align(classes, missing_hint="The cifar100 source knows CIFAR-100's 100 fine labels only (e.g. "
                      "maple_tree, aquarium_fish); fix the class list, or omit --classes.") if classes else hier


@hookimpl
def register_hierarchy_sources(register):
    register("cifar100", build, config=Cifar100Options,
             description="CIFAR-100's 20 official superclasses over its 100 classes (no files needed)")
