import json

import pytest

from hgltr_cli.errors import HgltrError
from hgltr_cli.hierarchy import Hierarchy, load_hierarchy


def small():
    return Hierarchy.from_paths(
        [("tabby", "tabby", ["root", "animal", "cat", "tabby"]),
         ("tiger_cat", "tiger cat", ["root", "animal", "cat", "tiger_cat"]),
         ("bus", "bus", ["root", "vehicle", "bus"])],
        nodes={"animal": "animal", "cat": "domestic cat", "vehicle": "vehicle"}, source="test")


def test_views():
    h = small()
    assert h.classes == ["tabby", "tiger_cat", "bus"]
    assert h.names == ["tabby", "tiger cat", "bus"]
    assert h.ancestors(0) == ["domestic cat", "animal"]
    assert h.ancestor_ids(0) == ["cat", "animal"]
    assert h.top_level(1) == "animal" and h.top_level(2) == "vehicle"
    assert h.is_tree


def test_prompts():
    h = small()
    assert h.prompts()[0] == "a photo of a tabby(domestic cat, animal)"
    assert h.prompts("plain")[1] == "a photo of tiger cat"
    assert h.prompts("{name}, a kind of {parent}; {path}")[0] == "tabby, a kind of domestic cat; animal > domestic cat > tabby"
    assert h.prompts(max_ancestors=1)[0] == "a photo of a tabby(domestic cat)"
    # the aliases that plain class-name lists accept (model/text.py) work on a hierarchy too
    assert h.prompts("a {class} ({parent})")[1] == h.prompts("a {} ({parent})")[1] == "a tiger cat (domestic cat)"
    top = Hierarchy.from_paths([("x", "x", ["root", "x"])])
    assert top.prompts() == ["a photo of a x"]
    with pytest.raises(HgltrError, match="unknown: colour"):
        h.prompts("a {colour} {name}")
    with pytest.raises(HgltrError, match="neither a known template"):
        h.prompts("fancy")


def test_save_load_roundtrip_json_and_yaml(tmp_path):
    h = small()
    for name in ("h.json", "h.yaml"):
        p = h.save(tmp_path / name)
        back = load_hierarchy(p)
        assert back.content_hash == h.content_hash
        assert back.classes == h.classes and back.ancestors(0) == h.ancestors(0)
    data = json.loads((tmp_path / "h.json").read_text())
    assert data["format"] == "hgltr-hierarchy" and data["classes"][0]["path"][0] == "root"
    assert data["source"] == "test" and data["content_hash"].startswith("sha256:")


def test_save_on_a_full_disk_is_a_clean_error_and_leaves_no_temp_file(tmp_path, monkeypatch):
    """The file is created, then its write fails with ENOSPC (disk full mid-write): an HgltrError
    naming the file, no hierarchy file and no temp file left behind."""
    import builtins
    import errno
    import io

    real_open = builtins.open

    class Full:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    def full_disk_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return Full(f) if "w" in mode and str(tmp_path) in str(file) else f

    monkeypatch.setattr(builtins, "open", full_disk_open)
    monkeypatch.setattr(io, "open", full_disk_open)  # what pathlib writes through
    with pytest.raises(HgltrError) as exc:
        small().save(tmp_path / "h.json")
    assert "could not write the hierarchy" in exc.value.message and "disk is full" in exc.value.message
    assert "h.json" in exc.value.message and "space" in exc.value.hint
    assert list(tmp_path.iterdir()) == []


def test_hash_covers_content_not_metadata():
    a, b = small(), small()
    b.source = "other"
    assert a.content_hash == b.content_hash
    assert a.with_names(["Tabby", None, None]).content_hash != a.content_hash


def test_edited_file_is_refused_unless_hash_removed(tmp_path):
    p = small().save(tmp_path / "h.json")
    data = json.loads(p.read_text())
    data["classes"][0]["name"] = "changed"
    p.write_text(json.dumps(data))
    with pytest.raises(HgltrError, match="content_hash does not match"):
        load_hierarchy(p)
    del data["content_hash"]
    p.write_text(json.dumps(data))
    assert load_hierarchy(p).names[0] == "changed"


@pytest.mark.parametrize("text,match", [("", "is empty"), ("{nope", "malformed"), ('{"a": 1}', "not an hgltr hierarchy"),
                                        ('{"format": "hgltr-hierarchy", "classes": [{"name": "x"}]}', "malformed")])
def test_bad_files(tmp_path, text, match):
    p = tmp_path / "h.json"
    p.write_text(text)
    with pytest.raises(HgltrError, match=match):
        load_hierarchy(p)
    with pytest.raises(HgltrError, match="does not exist"):
        load_hierarchy(tmp_path / "missing.json")


def test_duplicate_class_and_cycles():
    with pytest.raises(HgltrError, match="duplicate class"):
        Hierarchy.from_paths([("a", "a", ["root", "a"]), ("a", "a", ["root", "x", "a"])])
    with pytest.raises(HgltrError, match="cycle"):
        Hierarchy.from_paths([("a", "a", ["root", "x", "y", "x", "a"])])
    with pytest.raises(HgltrError, match="cycle in the hierarchy: x > y > x|cycle in the hierarchy: y > x > y"):
        Hierarchy.from_paths([("a", "a", ["root", "x", "y", "a"]), ("b", "b", ["root", "y", "x", "b"])])
    with pytest.raises(HgltrError, match="must start at the root"):
        Hierarchy.from_paths([("a", "a", ["top", "a"])])


def test_align_reorders_subsets_and_matches_loosely():
    h = small()
    a = h.align(["Bus", "tiger cat", "tabby"])
    assert a.classes == ["bus", "tiger_cat", "tabby"]
    assert a.distance_matrix()[1, 2] == 1
    assert h.align(["tiger-cat"]).classes == ["tiger_cat"]


def test_align_lists_every_missing_class_with_close_matches():
    with pytest.raises(HgltrError) as exc:
        small().align(["tabby", "tabbby", "buss", "zebra"])
    msg = exc.value.message
    assert "3 class(es) missing" in msg and "tabbby" in msg and "zebra" in msg and "close: bus" in msg


def test_align_ambiguous_and_repeated():
    h = Hierarchy.from_paths([("n1", "crane", ["root", "bird", "n1"]), ("n2", "crane", ["root", "machine", "n2"])])
    with pytest.raises(HgltrError, match="ambiguous class name"):
        h.align(["crane"])
    assert h.align(["n2", "n1"]).classes == ["n2", "n1"]
    with pytest.raises(HgltrError, match="same hierarchy class twice"):
        h.align(["n1", "n1"])


def test_tree_order_groups_siblings():
    h = Hierarchy.from_paths([("a", "a", ["root", "x", "a"]), ("b", "b", ["root", "y", "b"]),
                              ("c", "c", ["root", "x", "c"])])
    assert [h.classes[i] for i in h.tree_order()] == ["a", "c", "b"]


def test_summary():
    s = small().summary()
    assert s["classes"] == 3 and s["depth_min"] == 2 and s["depth_max"] == 3
    assert s["nodes_per_level"] == [1, 2, 2, 2]
    assert s["inf_pair_share"] == pytest.approx(4 / 6)
    assert s["top_level"][0] == ("animal", 2)


def test_heatmap_png(tmp_path):
    from hgltr_cli.hierarchy.plot import plot_heatmap

    p = plot_heatmap(small(), tmp_path / "sub" / "h.png")
    assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = plot_heatmap(small(), tmp_path / "heatmap")  # no extension: .png added, and reported
    assert bare == tmp_path / "heatmap.png" and bare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
