"""LCA distances H and the similarity S = softmax(-tau_s * H) (METHOD.md sections 1-2).

Two vectorised algorithms, both O(K^2) memory:

* trees (every node has one parent, one path per class): the LCA depth of two classes is
  the length of their common path prefix, found with one K x K comparison per level;
* DAGs (multi-parent nodes or several paths per class): H[a, b] is the smallest cost over
  the non-root common ancestors x, cost = max(dist(x -> a), dist(x -> b)) for pair-depth
  or height(x) for lca-height; found with one boolean matmul per distinct cost value.

On a tree both give the same result (tests check it), so the DAG rule "deepest common
ancestor over all paths" reduces to the ordinary LCA where there is nothing to choose.
"""
from __future__ import annotations

from typing import Sequence

import torch

KINDS = ("pair-depth", "lca-height")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        from hgltr_cli.errors import HgltrError

        raise HgltrError(f"unknown distance kind {kind!r}.", f"Use one of: {', '.join(KINDS)}.")


def tree_distance(paths: Sequence[Sequence[int]], kind: str = "pair-depth") -> torch.Tensor:
    """H for a tree: `paths[k]` are node indices root-first (same root), one path per class.

    pair-depth: max(len_a - 1 - d, len_b - 1 - d) with d the LCA depth; lca-height: the
    LCA node's height (longest edge count down to a class below it). Root LCA -> +inf.
    """
    _check_kind(kind)
    k = len(paths)
    depth_max = max(len(p) for p in paths)
    table = torch.full((k, depth_max), -1, dtype=torch.int64)
    for i, p in enumerate(paths):
        table[i, : len(p)] = torch.as_tensor(list(p), dtype=torch.int64)
    lengths = torch.tensor([len(p) for p in paths], dtype=torch.int64)
    below = (lengths - 1).to(torch.float32)  # edges root -> class
    if kind == "lca-height":
        height = torch.zeros(int(table.max()) + 1, dtype=torch.float32)
        valid = table >= 0
        down = (lengths[:, None] - 1 - torch.arange(depth_max)[None, :]).to(torch.float32)
        height.scatter_reduce_(0, table[valid], down[valid], reduce="amax", include_self=True)
    h = torch.empty((k, k), dtype=torch.float32)
    # row blocks keep the temporaries small: peak memory is H itself plus O(block * K)
    block = max(1, min(k, (1 << 22) // max(k, 1)))
    for r0 in range(0, k, block):
        r1 = min(k, r0 + block)
        lca = torch.zeros((r1 - r0, k), dtype=torch.int64)  # LCA depth, root = 0
        common = torch.ones((r1 - r0, k), dtype=torch.bool)
        for level in range(1, depth_max):
            col = table[:, level]
            common &= (col[r0:r1, None] == col[None, :]) & (col[r0:r1] >= 0)[:, None]
            if not bool(common.any()):
                break
            lca += common
        if kind == "pair-depth":
            d = lca.to(torch.float32)
            out = torch.maximum(below[r0:r1, None] - d, below[None, :] - d)
        else:  # height of the LCA node table[a, lca[a, b]]
            out = height[torch.gather(table[r0:r1], 1, lca)]
        out[lca == 0] = float("inf")
        h[r0:r1] = out
    h.fill_diagonal_(0.0)
    return h


def dag_distance(paths: Sequence[Sequence[Sequence[int]]], n_nodes: int, root: int,
                 kind: str = "pair-depth") -> torch.Tensor:
    """H for a DAG: `paths[k]` is a list of root-first node-index paths of class k.

    For every class a and ancestor x, dist(x -> a) is the shortest edge count from x down to
    a over a's paths. H[a, b] = min over common ancestors x != root of max(dist(x->a),
    dist(x->b)) (pair-depth) or of height(x) (lca-height, height = the longest such dist to
    any class below x). No common ancestor but the root -> +inf.
    """
    _check_kind(kind)
    k = len(paths)
    inf = float("inf")
    cost = torch.full((k, n_nodes), inf, dtype=torch.float32)
    for a, plist in enumerate(paths):
        for p in plist:
            n = len(p)
            idx = torch.as_tensor(list(p), dtype=torch.int64)
            dist = torch.arange(n - 1, -1, -1, dtype=torch.float32)
            cost[a].scatter_reduce_(0, idx, dist, reduce="amin", include_self=True)
    cost[:, root] = inf
    if kind == "lca-height":
        member = torch.isfinite(cost)
        height = torch.where(member, cost, torch.tensor(-1.0)).amax(dim=0)
        cost = torch.where(member, height[None, :].expand(k, n_nodes), torch.tensor(inf))
    # keep only the nodes some class reaches (saves matmul width)
    used = torch.isfinite(cost).any(dim=0)
    cost = cost[:, used]
    h = torch.full((k, k), inf, dtype=torch.float32)
    values = torch.unique(cost[torch.isfinite(cost)])
    for t in values.tolist():  # ascending: first threshold that connects a pair is its H
        m = (cost <= t).to(torch.float32)
        hit = (m @ m.T) > 0
        h = torch.where(hit & torch.isinf(h), torch.tensor(t, dtype=torch.float32), h)
    h.fill_diagonal_(0.0)
    return h


def similarity(h: torch.Tensor, tau_s: float = 1.0) -> torch.Tensor:
    """S = row-wise softmax(-tau_s * H); entries where H is +inf are exactly 0 (Eq. 1).

    Every row has H[a, a] = 0, so no row is all +inf and each row sums to 1.
    """
    if tau_s <= 0:
        from hgltr_cli.errors import HgltrError

        raise HgltrError(f"tau_s must be positive, got {tau_s}.", "The authors used 1 (ImageNet-LT), 4 (Places-LT), 1.5 (iNat).")
    logits = -float(tau_s) * h.to(torch.float32)  # -inf where H = +inf: softmax gives exact 0
    return torch.softmax(logits, dim=1)
