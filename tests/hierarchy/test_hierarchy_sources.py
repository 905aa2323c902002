"""file, inat and cifar100 sources (WordNet has its own module)."""
import json

import pytest

from hgltr_cli.errors import HgltrError
from hgltr_plugins.hierarchies import cifar100, file as file_src, inat

INF = float("inf")


def test_cifar100_apple_pear_bus():
    h = cifar100.build(None)
    assert len(h) == 100 and h.classes[:2] == ["apple", "aquarium_fish"]
    H = h.distance_matrix()
    i = h.classes.index
    assert H[i("apple"), i("pear")] == 1
    assert H[i("apple"), i("bus")] == INF
    assert h.top_level(i("bus")) == "vehicles"
    assert sum(len(v) for v in cifar100.SUPERCLASSES.values()) == len(set(cifar100.fine_label_names()))


def test_cifar100_follows_class_list():
    assert cifar100.build(None, ["pear", "apple"]).classes == ["pear", "apple"]
    with pytest.raises(HgltrError, match="missing"):
        cifar100.build(None, ["pear", "appel"])


def opts(path, **kw):
    return file_src.FileOptions(taxonomy=str(path), **kw)


def test_file_yaml_tree(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("animal:\n  cat: [tabby, tiger cat]\n  dog:\n    husky: null\nvehicle: [bus]\n")
    h = file_src.build(opts(p), ["bus", "husky", "tabby", "tiger cat"])
    assert h.classes == ["bus", "husky", "tabby", "tiger cat"]
    H = h.distance_matrix()
    assert H[2, 3] == 1 and H[1, 2] == 2 and H[0, 1] == INF
    assert h.ancestors(2) == ["cat", "animal"]


def test_file_json_tree_multi_parent(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"indoor": {"food": ["bakery", "kitchen"]}, "outdoor": {"shops": ["bakery", "market"]}}))
    h = file_src.build(opts(p))
    assert h.classes == ["bakery", "kitchen", "market"]
    assert len(h.entries[0].paths) == 2
    H = h.distance_matrix()
    assert H[0, 1] == 1 and H[0, 2] == 1 and H[1, 2] == INF
    one = file_src.build(opts(p, dag_rule="longest-path"))
    assert len(one.entries[0].paths) == 1 and one.distance_matrix()[0, 2] == INF


def test_file_table_csv_and_tsv(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("kingdom,family,class\nanimal,cat,tabby\nanimal,cat,tiger cat\nvehicle,bus,\n")
    h = file_src.build(opts(p))
    assert h.classes == ["tabby", "tiger cat", "bus"]
    assert h.distance_matrix()[0, 1] == 1 and h.entries[2].path == ["root", "vehicle", "bus"]
    t = tmp_path / "t.tsv"
    t.write_text("a\tb\nx\tc1\nx\tc2\n")
    assert file_src.build(opts(t)).distance_matrix()[0, 1] == 1


def test_file_paths_format(tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("paths:\n  tabby: [animal, cat]\n  bakery: [[indoor, food], [outdoor, shops]]\n")
    h = file_src.build(opts(p))
    assert h.entries[0].path == ["root", "animal", "cat", "tabby"] and len(h.entries[1].paths) == 2


def test_places365_official_layout(places_csv):
    h = file_src.build(opts(places_csv))
    assert len(h) == 8 and h.classes[0] == "/a/airfield"
    i = h.classes.index
    bakery = h.entries[i("/b/bakery/shop")]
    assert sorted(p[1] for p in bakery.paths) == ["indoor", "outdoor, man-made"]
    assert bakery.paths[0][2] == "shopping and dining"
    H = h.distance_matrix()
    assert H[i("/c/coast"), i("/m/mountain")] == 2  # both outdoor, natural; different level-2
    assert H[i("/b/bedroom"), i("/o/office")] == 2
    assert H[i("/b/bakery/shop"), i("/b/bedroom")] == 2  # via indoor
    assert H[i("/c/coast"), i("/o/office")] == INF
    # a dataset's plain names ('airfield', 'bakery/shop') align through the loose matching
    assert h.align(["airfield", "bakery/shop"]).classes == ["/a/airfield", "/b/bakery/shop"]


@pytest.mark.parametrize("name,text,match", [
    ("e.yaml", "", "is empty"),
    ("m.yaml", "a: [b\n", "malformed"),
    ("c.csv", "l1,l2\nx,a\ny,b,extra\n", "wrong columns"),
    ("h.csv", "l1,\nx,a\n", "wrong columns"),
    ("g.csv", "l1,l2,l3\nx,,a\n", "empty in the middle"),
    ("s.yaml", "just a string", "nested mapping"),
    ("cy.yaml", "a:\n  b:\n    a: [c]\n", "cycle"),
    ("cy2.yaml", "x:\n  y: [c1]\ny:\n  x: [c2]\n", "cycle"),
    ("d.yaml", "a: [c1, c1]\n", "."),  # same class twice under one parent: merged, not an error
])
def test_file_bad_input(tmp_path, name, text, match):
    p = tmp_path / name
    p.write_text(text)
    if name == "d.yaml":
        assert file_src.build(opts(p)).classes == ["c1"]
        return
    with pytest.raises(HgltrError, match=match):
        file_src.build(opts(p))


def test_file_node_or_class_named_root(tmp_path):
    """A user's node (or class) literally named `root` is an ordinary node, not a cycle with the
    implicit root; the hierarchy round-trips through its file."""
    from hgltr_cli.hierarchy import load_hierarchy

    p = tmp_path / "t.yaml"
    p.write_text("root:\n  plant: [fern, moss]\n  animal: [cat]\nother: [rock]\n")
    h = file_src.build(opts(p))
    assert h.classes == ["fern", "moss", "cat", "rock"]
    assert h.root != "root" and h.entries[0].path == [h.root, "root", "plant", "fern"]
    assert h.ancestors(2) == ["animal", "root"] and h.top_level(0) == "root"
    H = h.distance_matrix()
    assert H[0, 1] == 1 and H[0, 2] == 2 and H[0, 3] == INF
    assert h.prompts()[0] == "a photo of a fern(plant, root)"
    back = load_hierarchy(h.save(tmp_path / "h.json"))
    assert back.root == h.root and back.content_hash == h.content_hash
    t = tmp_path / "t.csv"
    t.write_text("level,class\nroot,a\nroot,b\n")
    assert file_src.build(opts(t)).distance_matrix()[0, 1] == 1
    c = tmp_path / "c.yaml"  # a class named root (was refused as reserved)
    c.write_text("plant: [root, stem]\n")
    assert file_src.build(opts(c)).distance_matrix()[0, 1] == 1


def test_file_missing_classes_all_listed(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("animal: [cat, dog]\n")
    with pytest.raises(HgltrError) as exc:
        file_src.build(opts(p), ["cat", "cow", "horse"])
    assert "2 class(es) missing" in exc.value.message and "cow" in exc.value.message and "horse" in exc.value.message
    # the fix names the taxonomy file, not `build-hierarchy --classes` (which the user is already running)
    assert str(p) in exc.value.hint and "leaf" in exc.value.hint


def test_sources_say_how_to_fix_missing_classes(inat2021):
    with pytest.raises(HgltrError) as exc:
        cifar100.build(None, ["pear", "appel"])
    assert "fine labels" in exc.value.hint
    with pytest.raises(HgltrError) as exc:
        inat.build(inat.INatOptions(categories=str(inat2021)), ["2", "999"])
    assert "999" in exc.value.message and str(inat2021) in exc.value.hint


def test_file_needs_taxonomy():
    with pytest.raises(HgltrError, match="needs a taxonomy"):
        file_src.build(file_src.FileOptions())


@pytest.mark.parametrize("fixture", ["inat2018", "inat2021"])
def test_inat_official_layouts(fixture, request):
    path = request.getfixturevalue(fixture)
    h = inat.build(inat.INatOptions(categories=str(path)))
    assert h.classes == [str(i) for i in range(7)]  # label order = category id
    assert all(len(e.path) == 8 for e in h.entries)  # root + kingdom..genus + species
    H = h.distance_matrix()
    assert H[0, 1] == 1  # two Panthera species
    assert H[0, 2] == 2  # same family Felidae
    assert H[0, 4] == INF  # animal vs plant
    assert H[5, 6] == INF  # homonym genus Morus: a plant and a bird are not siblings
    assert h.prompts()[0] == ("a photo of a Panthera leo(Panthera, Felidae, Carnivora, Mammalia, Chordata, Animalia)")


def test_inat_common_names_and_class_list(inat2021):
    h = inat.build(inat.INatOptions(categories=str(inat2021), name_key="common_name"), ["2", "0"])
    assert h.classes == ["2", "0"] and h.names[1] == "Panthera sp."


def test_inat_bad_files(tmp_path):
    bad = tmp_path / "c.json"
    bad.write_text(json.dumps([{"id": 0, "name": "x", "kingdom": "A"}]))
    with pytest.raises(HgltrError, match="lack required keys"):
        inat.build(inat.INatOptions(categories=str(bad)))
    bad.write_text("{]")
    with pytest.raises(HgltrError, match="malformed"):
        inat.build(inat.INatOptions(categories=str(bad)))
    bad.write_text('{"categories": []}')
    with pytest.raises(HgltrError, match="no list of categories"):
        inat.build(inat.INatOptions(categories=str(bad)))


def test_places365_explicit_groups(places_csv):
    h = file_src.build(opts(places_csv, places_groups=[3, 3, 3]))
    assert h.distance_matrix().shape == (8, 8)
    with pytest.raises(HgltrError, match="places_groups"):
        file_src.build(opts(places_csv, places_groups=[6, 4, 6]))
