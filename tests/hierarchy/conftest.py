"""Fixtures for hierarchy tests: small files in the official layouts, written to tmp dirs."""
from __future__ import annotations

import json

import pytest


@pytest.fixture
def places_csv(tmp_path):
    """Places365's scene_hierarchy_places365.csv layout: 2 header lines, quoted scene, 3 + 16 flags.

    Trimmed to 3 level-2 columns per level-1 group for size; 'bakery' sits under two level-2
    categories in two level-1 groups (a multi-parent scene, as in the official table).
    """
    l1 = ["indoor", "outdoor, natural", "outdoor, man-made"]
    l2 = ["shopping and dining", "workplace (office building, factory, lab, etc.)", "home or hotel",
          "water, ice, snow", "mountains, hills, desert, sky", "forest, field, jungle",
          "transportation (roads, parking, bridges, boats, airports, etc.)", "industrial and construction",
          "commercial buildings, shops, markets, cities, and towns"]
    rows = {
        "/a/airfield": ([0, 0, 1], [0, 0, 0, 0, 0, 0, 1, 0, 0]),
        "/b/bakery/shop": ([1, 0, 1], [1, 0, 0, 0, 0, 0, 0, 0, 1]),
        "/b/bedroom": ([1, 0, 0], [0, 0, 1, 0, 0, 0, 0, 0, 0]),
        "/c/coast": ([0, 1, 0], [0, 0, 0, 1, 0, 0, 0, 0, 0]),
        "/f/forest/broadleaf": ([0, 1, 0], [0, 0, 0, 0, 0, 1, 0, 0, 0]),
        "/o/office": ([1, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0]),
        "/m/mountain": ([0, 1, 0], [0, 0, 0, 0, 1, 0, 0, 0, 0]),
        "/c/construction_site": ([0, 0, 1], [0, 0, 0, 0, 0, 0, 0, 1, 0]),
    }

    def q(s):
        return f'"{s}"' if "," in s else s

    lines = ["category,level 1,,," + "level 2" + "," * (len(l2) - 1),
             "," + ",".join(q(c) for c in l1 + l2)]
    for scene, (f1, f2) in rows.items():
        lines.append(f"'{scene}'," + ",".join(map(str, f1 + f2)))
    p = tmp_path / "scene_hierarchy_places365.csv"
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


INAT = [
    # iNat 2018 categories.json: a list; ids are the labels
    {"id": 2, "name": "Felis catus", "supercategory": "Mammalia", "kingdom": "Animalia", "phylum": "Chordata",
     "class": "Mammalia", "order": "Carnivora", "family": "Felidae", "genus": "Felis"},
    {"id": 0, "name": "Panthera leo", "supercategory": "Mammalia", "kingdom": "Animalia", "phylum": "Chordata",
     "class": "Mammalia", "order": "Carnivora", "family": "Felidae", "genus": "Panthera"},
    {"id": 1, "name": "Panthera tigris", "supercategory": "Mammalia", "kingdom": "Animalia", "phylum": "Chordata",
     "class": "Mammalia", "order": "Carnivora", "family": "Felidae", "genus": "Panthera"},
    {"id": 3, "name": "Canis lupus", "supercategory": "Mammalia", "kingdom": "Animalia", "phylum": "Chordata",
     "class": "Mammalia", "order": "Carnivora", "family": "Canidae", "genus": "Canis"},
    {"id": 4, "name": "Quercus robur", "supercategory": "Plantae", "kingdom": "Plantae", "phylum": "Tracheophyta",
     "class": "Magnoliopsida", "order": "Fagales", "family": "Fagaceae", "genus": "Quercus"},
    # a homonym genus: 'Morus' is a plant genus (mulberry) and a bird genus (gannets)
    {"id": 5, "name": "Morus alba", "supercategory": "Plantae", "kingdom": "Plantae", "phylum": "Tracheophyta",
     "class": "Magnoliopsida", "order": "Rosales", "family": "Moraceae", "genus": "Morus"},
    {"id": 6, "name": "Morus bassanus", "supercategory": "Aves", "kingdom": "Animalia", "phylum": "Chordata",
     "class": "Aves", "order": "Suliformes", "family": "Sulidae", "genus": "Morus"},
]


@pytest.fixture
def inat2018(tmp_path):
    p = tmp_path / "categories.json"
    p.write_text(json.dumps(INAT), encoding="utf-8")
    return p


@pytest.fixture
def inat2021(tmp_path):
    """iNat 2021: categories inside train.json, with specific_epithet and common_name."""
    cats = [dict(c, common_name=c["name"].split()[0] + " sp.", specific_epithet=c["name"].split()[1]) for c in INAT]
    p = tmp_path / "train.json"
    p.write_text(json.dumps({"info": {"year": 2021}, "images": [], "annotations": [], "categories": cats}),
                 encoding="utf-8")
    return p
