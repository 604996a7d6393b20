"""Duplicate columns of a run: exact copies by pixel hash, near copies by perceptual hash (the
in-process counterpart of :mod:`restore_core.lsh`). One algorithm, :func:`duplicate_arrays`, over
compact arrays (the streaming run-wide step parses them from Arrow buffers with
:func:`hex_to_u64`); :func:`duplicate_columns` feeds it a whole table's hex strings.

Re-exported by :mod:`restore_core.quality`. Nothing here imports ray.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


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
    sha_ok = np.array([s is not None for s in sha256], dtype=bool)
    dhash, dhash_ok = hex_to_u64(pa.array(list(dhash_hex), pa.string()))
    # Exact copies are equal strings: their rank among the distinct ones stands in for the 128 bits.
    _, rank = np.unique(np.array([str(s) for s in sha256], dtype=object), return_inverse=True)
    sha = np.stack([rank.ravel().astype(np.uint64), np.zeros(len(sha_ok), np.uint64)], axis=1)
    return duplicate_arrays(sha, dhash, sha_ok & dhash_ok, np.arange(len(sha_ok)), max_distance, min_bits)


_HEX = np.full(256, 255, dtype=np.uint8)
_HEX[np.frombuffer(b"0123456789", np.uint8)] = np.arange(10)
_HEX[np.frombuffer(b"abcdef", np.uint8)] = np.arange(10, 16)
_HEX[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16)


def hex_to_u64(values: pa.Array, digits: int = 16, skip: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``digits`` (at most 16) hex digits from position ``skip`` of each string as uint64, and a
    validity mask (null, too short or not hex: invalid). Vectorised over the Arrow buffers."""
    values = values.cast(pa.large_string())
    n = len(values)
    valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + n + 1]
    valid &= (offsets[1:] - offsets[:-1]) >= skip + digits
    out = np.zeros(n, dtype=np.uint64)
    if not valid.any():
        return out, valid
    data = np.frombuffer(values.buffers()[2], dtype=np.uint8)
    starts = np.where(valid, offsets[:-1] + skip, 0)
    nibbles = _HEX[data[starts[:, None] + np.arange(digits)]]
    valid &= (nibbles != 255).all(axis=1)
    for k in range(digits):
        out = (out << np.uint64(4)) | nibbles[:, k].astype(np.uint64)
    out[~valid] = 0
    return out, valid


def informative_mask(hashes: np.ndarray, min_bits: int) -> np.ndarray:
    """:func:`restore_core.metrics.hash_is_informative` over a uint64 array."""
    ones = np.bitwise_count(np.asarray(hashes, dtype=np.uint64)).astype(np.int64)
    return (ones >= min_bits) & (ones <= 64 - min_bits)


def duplicate_arrays(
    sha: np.ndarray, dhash: np.ndarray, valid: np.ndarray, order_rank: np.ndarray, max_distance: int, min_bits: int
) -> dict[str, np.ndarray]:
    """The duplicate columns (as :func:`duplicate_columns` describes them) over arrays.

    ``sha``: (n, 2) uint64, the first 128 bits of each row's pixel hash; ``dhash``: (n,) uint64;
    ``valid``: rows that have both; ``order_rank``: each row's position in id order, so the
    group labels equal those of the whole table sorted by id.
    """
    n = valid.size
    exact = np.zeros(n, dtype=np.float64)
    near = np.zeros(n, dtype=np.float64)
    group = np.full(n, -1, dtype=np.int64)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return {"exact_duplicates": exact, "near_duplicates": near, "duplicate_group": group}
    idx = idx[np.argsort(order_rank[idx], kind="stable")]  # id order, as the whole-table function
    m = idx.size
    # Exact copies: only rows whose first 64 bits another row shares (few) are compared on 128.
    # sha_first: the position (in idx) of the first row with the same pixel hash.
    sha_first = np.arange(m, dtype=np.int64)
    hi = sha[idx, 0]
    o = np.argsort(hi, kind="stable")
    same = hi[o[1:]] == hi[o[:-1]]
    del hi
    shared = np.zeros(m, dtype=bool)
    shared[o[1:][same]] = True
    shared[o[:-1][same]] = True
    del o, same
    few = np.flatnonzero(shared)
    if few.size:
        keys = np.ascontiguousarray(sha[idx[few]]).view([("a", np.uint64), ("b", np.uint64)]).ravel()
        _, first, inv, counts = np.unique(keys, return_index=True, return_inverse=True, return_counts=True)
        inv = inv.ravel()
        sha_first[few] = few[first][inv]
        exact[idx[few]] = counts[inv] - 1
    values = dhash[idx]
    info = informative_mask(values, min_bits)
    labels = np.arange(m, dtype=np.int64)
    near_idx = np.flatnonzero(info)
    if near_idx.size:
        labels[near_idx] = near_idx[near_duplicate_groups(values[near_idx], max_distance)]
    del values, near_idx
    plain = ~info  # an uninformative hash is grouped with its exact copies only (same pixels: same hash)
    labels[plain] = sha_first[plain]
    del sha_first, plain, info
    size = np.bincount(labels, minlength=m)[labels]
    near[idx] = size - 1 - exact[idx]
    in_group = size > 1
    group[idx[in_group]] = order_rank[idx[labels[in_group]]]
    return {"exact_duplicates": exact, "near_duplicates": near, "duplicate_group": group}
