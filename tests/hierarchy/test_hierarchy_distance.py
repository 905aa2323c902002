import random

import pytest
import torch

from hgltr_cli.errors import HgltrError
from hgltr_cli.hierarchy import Hierarchy, similarity
from hgltr_cli.hierarchy.distance import dag_distance, tree_distance


def random_tree(k, seed, branching=(2, 3, 2, 4)):
    """Unbalanced random tree: some classes hang higher (paths of different lengths)."""
    rng = random.Random(seed)
    rows = []
    for c in range(k):
        depth = rng.randint(1, len(branching))
        path = ["root"]
        for lv in range(depth):
            path.append(f"{path[-1]}/{rng.randrange(branching[lv])}")
        rows.append((f"c{c}", f"c{c}", path + [f"c{c}"]))
    return Hierarchy.from_paths(rows)


def brute(h: Hierarchy, kind: str) -> torch.Tensor:
    """Definition-by-hand (METHOD.md 1) for comparison."""
    k = len(h)
    out = torch.zeros((k, k))
    height = {}
    for e in h.entries:
        for pos, n in enumerate(e.path):
            height[n] = max(height.get(n, 0), len(e.path) - 1 - pos)
    for a in range(k):
        for b in range(k):
            if a == b:
                continue
            pa, pb = h.entries[a].path, h.entries[b].path
            d = 0
            while d + 1 < min(len(pa), len(pb)) and pa[d + 1] == pb[d + 1]:
                d += 1
            if d == 0:
                out[a, b] = float("inf")
            elif kind == "pair-depth":
                out[a, b] = max(len(pa) - 1 - d, len(pb) - 1 - d)
            else:
                out[a, b] = height[pa[d]]
    return out


@pytest.mark.parametrize("kind", ["pair-depth", "lca-height"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_distance_matches_definition(kind, seed):
    h = random_tree(40, seed)
    assert torch.equal(h.distance_matrix(kind), brute(h, kind))


@pytest.mark.parametrize("kind", ["pair-depth", "lca-height"])
def test_dag_algorithm_equals_tree_algorithm_on_trees(kind):
    h = random_tree(60, 7)
    index = {"root": 0}
    for e in h.entries:
        for n in e.path:
            index.setdefault(n, len(index))
    paths = [[index[n] for n in e.path] for e in h.entries]
    assert torch.equal(tree_distance(paths, kind), dag_distance([[p] for p in paths], len(index), 0, kind))


def test_definitions_differ_on_unbalanced_tree():
    h = Hierarchy.from_paths([("a", "a", ["root", "x", "a"]), ("b", "b", ["root", "x", "y", "z", "b"]),
                              ("c", "c", ["root", "x", "y", "c"])])
    pd, lh = h.distance_matrix("pair-depth"), h.distance_matrix("lca-height")
    assert pd[0, 2] == 2  # LCA x at depth 1: max(1, 2)
    assert lh[0, 2] == 3  # x's height: down to b is 3 edges
    assert pd[1, 2] == lh[1, 2] == 2


def test_multi_path_class_takes_closest_common_ancestor():
    # 'bakery' under two parents: it is near both the shop and the kitchen
    h = Hierarchy.from_paths([
        ("bakery", "bakery", [["root", "indoor", "food", "bakery"], ["root", "outdoor", "shops", "bakery"]]),
        ("kitchen", "kitchen", ["root", "indoor", "food", "kitchen"]),
        ("market", "market", ["root", "outdoor", "shops", "market"]),
        ("coast", "coast", ["root", "nature", "coast"]),
    ])
    H = h.distance_matrix()
    assert not h.is_tree
    assert H[0, 1] == 1 and H[0, 2] == 1 and H[1, 2] == float("inf") and H[0, 3] == float("inf")
    assert torch.equal(H, H.T)


def test_similarity_rows_sum_to_one_with_exact_zeros():
    h = random_tree(50, 3)
    H = h.distance_matrix()
    for tau in (0.5, 1.0, 4.0):
        S = similarity(H, tau)
        assert torch.allclose(S.sum(1), torch.ones(len(h)), atol=1e-6)
        assert torch.all(S[torch.isinf(H)] == 0)
        assert torch.all(S[torch.isfinite(H)] > 0)
    # larger tau_s concentrates mass on the class itself
    assert torch.all(similarity(H, 4.0).diagonal() >= similarity(H, 1.0).diagonal())


def test_similarity_rejects_bad_tau():
    with pytest.raises(HgltrError):
        similarity(torch.zeros(2, 2), 0)


def test_unknown_kind():
    with pytest.raises(HgltrError, match="unknown distance kind"):
        random_tree(3, 0).distance_matrix("euclid")


def test_large_tree_is_fast_enough():
    import time

    h = random_tree(2000, 5, branching=(3, 4, 5, 6))
    t = time.perf_counter()
    H = h.distance_matrix()
    assert time.perf_counter() - t < 5
    assert H.dtype == torch.float32 and H.shape == (2000, 2000)
