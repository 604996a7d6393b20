"""Near duplicates by locality-sensitive hashing of 64-bit hashes: the pure half of the quality
job's duplicate search, and the small index the rows are joined with.

Two 64-bit hashes within ``d`` bits of each other agree exactly on at least one of ``d + 1``
disjoint bit bands (pigeonhole), so hashes are grouped per ``(band, band value)``
(:func:`band_keys`), only hashes in one bucket are compared (:func:`bucket_edges`, with a
pluggable ``confirm``: Hamming distance by default), and the confirmed pairs, a few per
duplicate, are joined by a union-find (:class:`UnionFind`) into a :class:`DuplicateIndex`.
Re-exported by :mod:`restore_core.aggregate`. Nothing here imports ray.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Confirm = Callable[[np.ndarray, np.ndarray], np.ndarray]


# ----------------------------------------------------------------------------- LSH on 64-bit hashes


def bands(max_distance: int) -> list[tuple[int, int]]:
    """``(shift, width)`` of the ``min(max_distance + 1, 64)`` disjoint bit bands of a 64-bit hash.

    Any two hashes within ``max_distance`` bits agree on at least one band (pigeonhole).
    """
    n = min(max(int(max_distance), 0) + 1, 64)
    edges = np.linspace(0, 64, n + 1).astype(int).tolist()
    return [(lo, hi - lo) for lo, hi in itertools.pairwise(edges)]


def band_keys(hashes: np.ndarray, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every hash once per band: ``(band index int64, band value int64, hash uint64)``, each (n * bands,)."""
    h = np.asarray(hashes, dtype=np.uint64)
    idx, key, val = [], [], []
    for b, (lo, width) in enumerate(bands(max_distance)):
        mask = np.uint64((1 << width) - 1) if width < 64 else np.uint64(0xFFFFFFFFFFFFFFFF)
        idx.append(np.full(h.size, b, dtype=np.int64))
        key.append(((h >> np.uint64(lo)) & mask).astype(np.int64))
        val.append(h)
    if not idx:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.uint64)
    return np.concatenate(idx), np.concatenate(key), np.concatenate(val)


def hamming_confirm(max_distance: int) -> Confirm:
    """The default confirm step: ``popcount(a ^ b) <= max_distance`` (a, b uint64, broadcast)."""

    def confirm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        x = np.asarray(a, dtype=np.uint64) ^ np.asarray(b, dtype=np.uint64)
        return np.asarray(np.bitwise_count(x) <= max_distance)

    return confirm


def bucket_edges(hashes: np.ndarray, confirm: Confirm) -> tuple[np.ndarray, np.ndarray]:
    """Confirmed links among the distinct hashes of one LSH bucket, as a spanning forest.

    Every pair in the bucket is offered to ``confirm`` (vectorised one row at a time, so memory
    stays linear in the bucket); the confirmed pairs are joined locally and only ``(member,
    root)`` edges come back: ``m - 1`` edges for a group of ``m``, not ``m²`` pairs.
    """
    vals = np.unique(np.asarray(hashes, dtype=np.uint64))
    m = vals.size
    if m < 2:
        return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
    uf = UnionFind()
    for j in range(m - 1):
        close = np.flatnonzero(confirm(vals[j + 1 :], vals[j]))
        for k in close:
            uf.union(int(vals[j]), int(vals[j + 1 + int(k)]))
    src, dst = [], []
    for node in uf.nodes():
        root = uf.find(node)
        if root != node:
            src.append(node)
            dst.append(root)
    return np.array(src, dtype=np.uint64), np.array(dst, dtype=np.uint64)


class UnionFind:
    """Disjoint sets over integer keys (path halving, the smaller key becomes the root)."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo

    def nodes(self) -> list[int]:
        return list(self.parent)


@dataclass
class DuplicateIndex:
    """The small broadcast the run-wide duplicate columns are joined from.

    ``sha_count``: rows per pixel hash, for hashes held by more than one row; ``hash_label``: the
    group of each informative dHash that is in a group; ``sha_label``: the group of each
    uninformative image with exact copies (such images are grouped with their copies only);
    ``label_rows``: rows per group. Its size grows with the number of duplicates, not of images.
    """

    sha_count: dict[str, int] = field(default_factory=dict)
    hash_label: dict[int, int] = field(default_factory=dict)
    sha_label: dict[str, int] = field(default_factory=dict)
    label_rows: dict[int, int] = field(default_factory=dict)

    def columns(self, sha256: Sequence[Any], dhash_hex: Sequence[Any], min_bits: int) -> dict[str, np.ndarray]:
        """``exact_duplicates``, ``near_duplicates``, ``duplicate_group`` for one batch of rows
        (the columns and meanings of :func:`restore_core.quality.duplicate_columns`)."""
        n = len(sha256)
        exact = np.zeros(n, dtype=np.float64)
        near = np.zeros(n, dtype=np.float64)
        group = np.full(n, -1, dtype=np.int64)
        for i, (s, d) in enumerate(zip(sha256, dhash_hex, strict=True)):
            if s is None or d is None:
                continue
            e = self.sha_count.get(s, 1) - 1
            exact[i] = e
            h = int(d, 16)
            if informative(h, min_bits):
                lab = self.hash_label.get(h, -1)
            else:
                lab = self.sha_label.get(s, -1)
            if lab >= 0:
                group[i] = lab
                near[i] = self.label_rows[lab] - 1 - e
        return {"exact_duplicates": exact, "near_duplicates": near, "duplicate_group": group}


def informative(value: int, min_bits: int) -> bool:
    """Same rule as :func:`restore_core.metrics.hash_is_informative`."""
    ones = int(value).bit_count()
    return min_bits <= ones <= 64 - min_bits


def duplicate_index(
    sha_groups: Iterable[tuple[str, str, int]],
    hash_counts: Mapping[int, int],
    edges: Iterable[tuple[int, int]],
    min_bits: int,
) -> DuplicateIndex:
    """Build the :class:`DuplicateIndex` from the aggregation's small results.

    ``sha_groups``: ``(sha256, dhash hex, rows)`` for pixel hashes held by more than one row;
    ``hash_counts``: rows per informative dHash, for those held by more than one row;
    ``edges``: confirmed near-duplicate links between distinct informative dHashes.
    Groups are numbered 0, 1, ... in the order of their smallest member (dHash groups first).
    """
    index = DuplicateIndex()
    uf = UnionFind()
    for a, b in edges:
        uf.union(int(a), int(b))
    for h in hash_counts:
        uf.find(int(h))
    members: dict[int, list[int]] = {}
    for node in uf.nodes():
        members.setdefault(uf.find(node), []).append(node)
    label = 0
    for root in sorted(members):
        hs = members[root]
        rows = sum(int(hash_counts.get(h, 1)) for h in hs)
        if rows < 2:
            continue
        for h in hs:
            index.hash_label[h] = label
        index.label_rows[label] = rows
        label += 1
    plain = []
    for sha, dh, rows in sha_groups:
        index.sha_count[str(sha)] = int(rows)
        if not informative(int(dh, 16), min_bits) and int(rows) > 1:
            plain.append((str(sha), int(rows)))
    for sha, rows in sorted(plain):
        index.sha_label[sha] = label
        index.label_rows[label] = rows
        label += 1
    return index
