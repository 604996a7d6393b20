"""Duplicate columns over a whole run held in memory: exact copies by pixel hash, near copies by
perceptual hash (the in-memory counterpart of :mod:`restore_core.aggregate`'s LSH).

Re-exported by :mod:`restore_core.quality`. Nothing here imports ray.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from restore_core import metrics


def near_duplicate_groups(hashes: Sequence[int] | np.ndarray, max_distance: int) -> np.ndarray:
    """Group labels (int64, (n,)) joining hashes within ``max_distance`` bits of one another.

    Transitive (single-link) groups; label = the smallest index in the group. Scales past
    pairwise comparison by the pigeonhole rule: two 64-bit hashes within ``d`` bits agree exactly
    on at least one of ``d + 1`` disjoint bit bands, so only hashes sharing a band value are
    compared. Equal hashes are merged first, so a run of identical (e.g. flat) images costs one
    comparison, not n². Vectorised: the pairs inside the buckets are compared a distance in the
    sorted order at a time, and the links joined by ``scipy.sparse.csgraph.connected_components``.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    h = np.asarray(hashes, dtype=np.uint64)
    n = h.size
    if n == 0:
        return np.arange(0, dtype=np.int64)
    uniq, inverse = np.unique(h, return_inverse=True)
    inverse = inverse.ravel()
    src, dst = [np.arange(0, dtype=np.int64)], [np.arange(0, dtype=np.int64)]
    if max_distance > 0 and uniq.size > 1:
        bands = min(max_distance + 1, 64)
        edges = np.linspace(0, 64, bands + 1).astype(int)
        for lo, hi in itertools.pairwise(edges.tolist()):
            key = (uniq >> np.uint64(lo)) & np.uint64((1 << (hi - lo)) - 1)
            order = np.argsort(key, kind="stable")
            sk = key[order]
            del key
            cand = np.flatnonzero(sk[1:] == sk[:-1])  # not the last of its bucket: the few in shared buckets
            if cand.size == 0:
                continue
            left = np.searchsorted(sk, sk[cand], side="right") - cand - 1  # members after it in its bucket
            del sk
            for step in range(1, int(left.max()) + 1):
                a = cand[left >= step]
                close = np.bitwise_count(uniq[order[a]] ^ uniq[order[a + step]]) <= max_distance
                src.append(order[a[close]])
                dst.append(order[a[close] + step])
    s, d = np.concatenate(src), np.concatenate(dst)
    graph = coo_matrix((np.ones(s.size, dtype=np.int8), (s, d)), shape=(uniq.size, uniq.size))
    _, comp = connected_components(graph, directed=False)
    comp = comp[inverse]  # each hash's component, per input position
    smallest = np.full(int(comp.max()) + 1, n, dtype=np.int64)
    np.minimum.at(smallest, comp, np.arange(n, dtype=np.int64))
    return smallest[comp]


def duplicate_columns(
    sha256: Sequence[str | None], dhash_hex: Sequence[str | None], max_distance: int, min_bits: int = 0
) -> dict[str, np.ndarray]:
    """Duplicate columns over a whole run.

    Near duplicates are looked for among informative hashes only (``min_bits`` ones and zeros at
    least, :func:`restore_core.metrics.hash_is_informative`): flat images, smooth skies and small
    objects on plain backgrounds all hash alike without being copies of one another. Exact
    duplicates (the same pixels) are found among every row.

    Returns ``exact_duplicates`` (float64: how many *other* rows have the same pixels),
    ``near_duplicates`` (float64: how many other rows are perceptually close, exact copies of
    this row not counted) and ``duplicate_group`` (int64: the near-duplicate group label, -1 for
    rows in no group or without a hash).
    """
    n = len(sha256)
    valid = np.array([s is not None and d is not None for s, d in zip(sha256, dhash_hex, strict=True)], dtype=bool)
    exact = np.zeros(n, dtype=np.float64)
    near = np.zeros(n, dtype=np.float64)
    group = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return {"exact_duplicates": exact, "near_duplicates": near, "duplicate_group": group}
    shas = np.array([str(sha256[int(i)]) for i in idx])
    _, sha_inv, sha_counts = np.unique(shas, return_inverse=True, return_counts=True)
    exact[idx] = sha_counts[sha_inv] - 1
    values = [int(str(dhash_hex[int(i)]), 16) for i in idx]
    informative = np.array([metrics.hash_is_informative(v, min_bits) for v in values], dtype=bool)
    # An uninformative hash is grouped with its exact copies only: its own pixel hash stands in.
    keys = [v if ok else f"sha:{shas[j]}" for j, (v, ok) in enumerate(zip(values, informative, strict=True))]
    hashes = np.array([v if ok else 0 for v, ok in zip(values, informative, strict=True)], dtype=np.uint64)
    labels = np.arange(idx.size, dtype=np.int64)
    near_idx = np.flatnonzero(informative)
    if near_idx.size:
        labels[near_idx] = near_idx[near_duplicate_groups(hashes[near_idx], max_distance)]
    first_by_key: dict[Any, int] = {}
    for j in np.flatnonzero(~informative):
        labels[j] = first_by_key.setdefault(keys[j], int(j))
    _, lab_inv, lab_counts = np.unique(labels, return_inverse=True, return_counts=True)
    near[idx] = lab_counts[lab_inv] - 1 - exact[idx]
    in_group = lab_counts[lab_inv] > 1
    group[idx[in_group]] = idx[labels[in_group]]
    return {"exact_duplicates": exact, "near_duplicates": near, "duplicate_group": group}
