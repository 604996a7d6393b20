"""The pure half of the quality job's distributed aggregation (restore_core/aggregate.py)."""

from collections import defaultdict

import numpy as np
import pytest

from restore_core import aggregate as agg
from restore_core import quality


def lsh_components(hashes: np.ndarray, d: int) -> dict[int, int]:
    """What the job does with Ray, in-process: buckets per (band, value), edges, union-find."""
    uniq = np.unique(hashes)
    band, key, val = agg.band_keys(uniq, d)
    buckets: dict[tuple[int, int], list[int]] = defaultdict(list)
    for b, k, v in zip(band.tolist(), key.tolist(), val.tolist(), strict=True):
        buckets[(b, k)].append(v)
    uf = agg.UnionFind()
    confirm = agg.hamming_confirm(d)
    for members in buckets.values():
        src, dst = agg.bucket_edges(np.array(members, dtype=np.uint64), confirm)
        assert src.size < max(len(set(members)), 1)  # a spanning forest, never all pairs
        for a, b in zip(src.tolist(), dst.tolist(), strict=True):
            uf.union(a, b)
    return {int(h): int(uf.find(int(h))) for h in uniq}  # type: ignore[arg-type]


@pytest.mark.parametrize("d", [0, 1, 4, 7])
def test_lsh_finds_every_pair_the_pairwise_check_finds(d):
    rng = np.random.default_rng(d)
    base = rng.integers(0, 2**63, 150, dtype=np.int64).astype(np.uint64) * np.uint64(2) + np.uint64(1)
    variants = []
    for h in base[:60]:  # near copies at every distance up to d + 2, a few per base hash
        for _ in range(3):
            bits = rng.choice(64, size=int(rng.integers(0, d + 3)), replace=False)
            variants.append(int(h) ^ sum(1 << int(b) for b in bits))
    hashes = np.array([*base.tolist(), *variants], dtype=np.uint64)
    comp = lsh_components(hashes, d)
    uniq = np.unique(hashes)
    close = np.bitwise_count(uniq[:, None] ^ uniq[None, :]) <= d
    pairs = 0
    for i, j in zip(*np.nonzero(np.triu(close, 1)), strict=True):
        assert comp[int(uniq[i])] == comp[int(uniq[j])], (hex(int(uniq[i])), hex(int(uniq[j])))
        pairs += 1
    assert pairs > 20 or d == 0  # distinct hashes are never 0 bits apart
    # and nothing more: the same groups as the in-memory single-link grouping
    labels = quality.near_duplicate_groups(uniq, d)
    for i in range(uniq.size):
        for j in range(i + 1, uniq.size):
            assert (labels[i] == labels[j]) == (comp[int(uniq[i])] == comp[int(uniq[j])])


def test_a_pluggable_confirm_step():
    a, b = 0x0F0F_F0F0_1234_ABCD, 0x0F0F_F0F0_1234_ABCD ^ 0b11
    src, _ = agg.bucket_edges(np.array([a, b], dtype=np.uint64), agg.hamming_confirm(4))
    assert src.size == 1
    never = agg.bucket_edges(np.array([a, b], dtype=np.uint64), lambda x, y: np.zeros(np.shape(x), bool))
    assert never[0].size == 0


def test_duplicate_index_matches_duplicate_columns():
    rng = np.random.default_rng(5)
    n = 400
    base = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    hashes = base.copy()
    hashes[50:70] = base[:20] ^ np.uint64(0b101)  # near copies
    hashes[70:80] = base[:10]  # same dHash, different pixels
    hashes[80:90] = np.uint64(0)  # plain: grouped by pixels only
    sha = [f"s{i}" for i in range(n)]
    for i in range(90, 110):  # exact copies
        sha[i] = sha[i - 20]
        hashes[i] = hashes[i - 20]
    sha[85] = sha[80]  # a plain image and its exact copy
    dh: list[str | None] = [f"{int(h):016x}" for h in hashes]
    sha_n: list[str | None] = list(sha)
    dh[3] = None  # an unreadable row
    sha_n[3] = None
    want = quality.duplicate_columns(sha_n, dh, 4, 8)

    valid = [i for i in range(n) if sha_n[i] is not None]
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for i in valid:
        counts[(sha_n[i], dh[i])] += 1  # type: ignore[index]
    sha_groups = [(s, d, c) for (s, d), c in counts.items() if c > 1]
    per_hash: dict[int, int] = defaultdict(int)
    for i in valid:
        h = int(dh[i], 16)  # type: ignore[arg-type]
        if agg.informative(h, 8):
            per_hash[h] += 1
    uniq = np.array(sorted(per_hash), dtype=np.uint64)
    comp = lsh_components(uniq, 4)
    edges = [(h, r) for h, r in comp.items() if h != r]
    index = agg.duplicate_index(sha_groups, {h: c for h, c in per_hash.items() if c > 1}, edges, 8)
    got = index.columns(sha_n, dh, 8)
    np.testing.assert_array_equal(got["exact_duplicates"], want["exact_duplicates"])
    np.testing.assert_array_equal(got["near_duplicates"], want["near_duplicates"])
    g, w = got["duplicate_group"], want["duplicate_group"]
    np.testing.assert_array_equal(g < 0, w < 0)
    for i in range(n):  # the same partition, labels aside
        for j in np.flatnonzero(w >= 0):
            if w[i] >= 0:
                assert (g[i] == g[j]) == (w[i] == w[j])
    assert g.max() == len(set(w[w >= 0].tolist())) - 1  # labels 0..k-1


def test_shape_stats_equal_the_in_memory_robust_z():
    rng = np.random.default_rng(2)
    w = rng.choice([128, 128, 128, 96, 64, 300], 500).astype(float)
    h = rng.choice([128, 128, 96, 48, 200], 500).astype(float)
    w[7] = np.nan  # unreadable
    want = quality.shape_columns(w, h, 0.08)
    pairs, counts = np.unique(np.stack([np.nan_to_num(w, nan=-1), h], 1), axis=0, return_counts=True)
    stats = agg.shape_stats(pairs[:, 0], pairs[:, 1], counts, 0.08)
    got = stats.columns(w, h)
    for k in ("size_deviation", "aspect_deviation"):
        np.testing.assert_allclose(got[k], want[k], rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_weighted_median(n):
    rng = np.random.default_rng(n)
    v = rng.integers(0, 20, n).astype(float)
    vals, counts = np.unique(v, return_counts=True)
    assert agg.weighted_median(vals, counts) == np.median(v)


def test_quantiles_from_histograms_merged_across_blocks():
    rng = np.random.default_rng(3)
    v = np.concatenate([np.zeros(300), rng.lognormal(2, 2, 5000), np.full(50, 7.0)])
    rng.shuffle(v)
    blocks = np.array_split(v, 7)
    ranges = {"sharpness": (float(v.min()), float(v.max()))}
    merged = agg.Partial()
    for b in blocks:
        part = agg.Partial.from_bytes(agg.second_pass({"sharpness": b}, ranges).to_bytes())
        merged = merged.merge(part, 5)
    qs = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
    got = agg.quantiles_from_histogram(
        merged.fine["sharpness"], merged.fine_lo["sharpness"], merged.fine_hi["sharpness"], qs
    )
    want = np.quantile(v, qs)
    iqr = want[4] - want[2]
    assert got[0] == want[0] == 0.0  # ties at one value are exact
    np.testing.assert_allclose(got, want, atol=1e-3 * iqr, rtol=2e-3)
    edges, log = agg.plot_edges("sharpness", *ranges["sharpness"])
    assert log and merged.plot["sharpness"].sum() == v.size and edges.size == agg.PLOT_BINS + 1


def test_first_pass_top_rows_merge_in_any_order():
    from restore_core.config import QualityConfig

    cfg = QualityConfig()
    rng = np.random.default_rng(0)
    n = 200
    cols = {"blur_width": rng.uniform(0, 3, n), "luma_p99": rng.uniform(0, 1, n)}
    ids = [f"i{k:03d}" for k in range(n)]
    status = ["ok"] * n
    whole = agg.first_pass(cols, ids, status, ["blur_width"], cfg.flags, 4)
    parts = [agg.first_pass({k: c[s] for k, c in cols.items()}, ids[s], status[s], ["blur_width"], cfg.flags, 4)
             for s in (slice(0, 50), slice(50, 120), slice(120, n))]  # fmt: skip
    merged = agg.Partial.from_bytes(parts[2].to_bytes()).merge(parts[0].merge(parts[1], 4), 4)
    assert merged.flags == whole.flags and merged.top == whole.top and merged.rows == n
    assert merged.count == whole.count and merged.lo == whole.lo and merged.hi == whole.hi
    blurry = [r[1] for r in whole.top["blurry"]]
    assert blurry == [ids[i] for i in np.argsort(-cols["blur_width"])[:4]]


def test_blur_stats_from_bin_counts_match_the_in_memory_ones():
    rng = np.random.default_rng(0)
    bw = np.concatenate([rng.lognormal(np.log(0.5), 0.3, 500), [2.5, 3.0, np.nan, 0.0]])
    bins = agg.blur_bins(bw)
    assert bins.size == 502  # NaN and 0 have no blur to count
    values, counts = np.unique(bins, return_counts=True)
    got = agg.blur_stats(values, counts, floor=0.15)
    center, scale = quality.blur_stats(bw, floor=0.15)
    assert got.center == pytest.approx(center, abs=agg.BLUR_STEP) and got.scale == pytest.approx(scale, abs=0.01)
    want = quality.blur_columns(bw, floor=0.15)["blur_deviation"]
    dev = got.columns(bw)["blur_deviation"]
    assert np.allclose(dev, want, atol=0.05, equal_nan=True) and dev[500] > 5
    empty = agg.blur_stats(np.zeros(0, np.int64), np.zeros(0, np.int64), floor=0.15)
    assert np.isnan(empty.columns(np.array([1.0]))["blur_deviation"]).all()
