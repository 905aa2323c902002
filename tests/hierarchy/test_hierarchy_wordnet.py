"""WordNet source; needs WordNet 3.0 (Debian wordnet-base + wordnet-sense-index, or nltk_data)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hgltr_cli.errors import HgltrError
from hgltr_cli.hierarchy import load_hierarchy

from hgltr_cli.hierarchy.wordnet_data import wordnet_available

pytestmark = pytest.mark.skipif(
    not wordnet_available(),
    reason="WordNet 3.0 missing: neither /usr/share/wordnet (apt-get install wordnet-base wordnet-sense-index) "
           "nor nltk_data holds it")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wordnet(tmp_path_factory):
    os.environ.setdefault("HGLTR_CACHE", str(tmp_path_factory.mktemp("cache")))
    from hgltr_plugins.hierarchies import wordnet as src

    return src


def test_tabby_and_tiger_cat(wordnet):
    h = wordnet.build(None, ["n02123045", "n02123159", "n04037443"])
    i, j = 0, 1
    lca = h.entries[i].path[-2]
    assert lca == h.entries[j].path[-2] and h.node_name(lca) == "domestic cat"
    H = h.distance_matrix("pair-depth")
    assert H[i, j] == 1
    assert H[0, 2] == float("inf")  # a cat and a racing car meet only above the cut
    assert h.prompts()[0].startswith("a photo of a tabby(domestic cat, cat, feline")
    assert h.rules["dag"] == "longest-path" and "entity.n.01" in h.rules["cut"]


def test_synset_names_plain_names_and_mapping(wordnet, tmp_path):
    m = tmp_path / "map.tsv"
    m.write_text("Sneaker\tgym_shoe.n.01\napple\tn07739125\n")
    h = wordnet.build(wordnet.WordNetOptions(mapping=str(m)), ["tabby.n.01", "sandal", "Sneaker", "apple"])
    assert h.classes[0] == "n02123045"
    assert h.names == ["tabby", "sandal", "Sneaker", "apple"]
    assert h.align(["Sneaker", "sandal"]).classes == [h.classes[2], h.classes[1]]


def test_ambiguous_and_unknown_names_are_all_reported(wordnet):
    with pytest.raises(HgltrError) as exc:
        wordnet.build(None, ["apple", "tabby.n.01", "zzzzcat", "n99999999"])
    msg, hint = exc.value.message, exc.value.hint
    assert "apple.n.01" in msg and "apple.n.02" in msg  # the candidates
    assert "zzzzcat" in msg and "n99999999" in msg
    assert "mapping file" in hint and "--mapping" in hint


def test_duplicate_synset(wordnet):
    with pytest.raises(HgltrError, match="same synset"):
        wordnet.build(None, ["n02123159", "tiger_cat.n.02"])


def test_dag_rules_and_cut(wordnet):
    keys = ["n02123045", "n04037443"]
    allp = wordnet.build(wordnet.WordNetOptions(dag_rule="all-paths"), keys)
    assert allp.rules["dag"] == "all-paths"
    entity = wordnet.build(wordnet.WordNetOptions(cut=[]), keys)
    assert entity.distance_matrix()[0, 1] < float("inf")  # rooted at entity everything meets
    assert entity.entries[0].path[1] == "n00001740"  # entity
    short = wordnet.build(wordnet.WordNetOptions(dag_rule="shortest-path"), keys)
    assert len(short.entries[0].path) <= len(entity.entries[0].path)
    with pytest.raises(HgltrError, match="not a WordNet synset"):
        wordnet.build(wordnet.WordNetOptions(cut=["nothing.n.99"]), keys)


def start_hashseed_builds(folder):
    """The default hierarchy of 100 ImageNet classes built under three PYTHONHASHSEEDs, in three processes
    (started early: each start-up loads WordNet, beside the other tests)."""
    timm_info = Path(__import__("timm").__file__).parent / "data" / "_info" / "imagenet_synsets.txt"
    wnids = timm_info.read_text().split()[::10]  # 100 classes, many with several hypernym paths
    code = ("import sys; from hgltr_plugins.hierarchies.wordnet import build; "
            "h = build(None, sys.argv[1].split(',')); print(h.content_hash)")
    return [subprocess.Popen([sys.executable, "-c", code, ",".join(wnids)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONHASHSEED=seed), cwd=REPO)
            for seed in ("0", "1", "12345")]


@pytest.mark.early_start.with_args(start_hashseed_builds)
def test_default_is_independent_of_pythonhashseed(early_started):
    """nltk's hypernym_paths() order varies with PYTHONHASHSEED; the default must not."""
    procs = early_started
    hashes = set()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        hashes.add(out.strip())
    assert len(hashes) == 1


def test_shipped_imagenet1k_rebuilds_identically(wordnet):
    """taxonomies/imagenet1k.json is exactly what the README's command builds offline."""
    timm_info = Path(__import__("timm").__file__).parent / "data" / "_info"
    wnids = (timm_info / "imagenet_synsets.txt").read_text().split()
    shipped = load_hierarchy(REPO / "taxonomies" / "imagenet1k.json")
    assert shipped.classes == wnids
    rebuilt = wordnet.build(None, wnids)
    assert rebuilt.content_hash == shipped.content_hash
    i, j = wnids.index("n02123045"), wnids.index("n02123159")
    assert shipped.distance_matrix()[i, j] == 1


def test_shipped_fashion_mnist():
    h = load_hierarchy(REPO / "taxonomies" / "fashion_mnist.json")
    assert h.names == ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                       "Ankle boot"]
    H = h.distance_matrix()
    i = h.names.index
    assert H[i("Sandal"), i("Sneaker")] < H[i("Sandal"), i("Dress")]
    data = json.loads((REPO / "taxonomies" / "fashion_mnist.json").read_text())
    assert data["source"] == "wordnet"


def test_prepare_wordnet_writes_lexnames(tmp_path):
    from hgltr_cli.hierarchy.wordnet_data import LEXNAMES, SYSTEM_WORDNET, prepare_wordnet

    if not SYSTEM_WORDNET.is_dir():
        pytest.skip("system WordNet files not installed")
    root = prepare_wordnet(tmp_path)
    lex = (root / "corpora" / "wordnet" / "lexnames").read_text().splitlines()
    assert len(lex) == len(LEXNAMES) and lex[5] == "05\tnoun.animal\t1"
    assert prepare_wordnet(tmp_path) == root  # idempotent


def test_missing_wordnet_is_a_clear_error(tmp_path):
    from hgltr_cli.hierarchy.wordnet_data import prepare_wordnet

    with pytest.raises(HgltrError, match="apt-get install"):
        prepare_wordnet(tmp_path / "c", source=tmp_path / "nowhere")
