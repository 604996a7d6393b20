"""The quality run's summaries on the cluster: partial aggregations, duplicate groups, id changes.

Ray Data operations whose results are small: one ``aggregate`` with a custom ``AggregateFnV2``
per pass (counts, flag counts, min/max/mean and the worst rows per flag, then histograms for
quantiles and plots), the report's duplicate groups (``groupby(duplicate_group).map_groups``, the
largest kept by a bounded heap) and drift's added/removed ids (an anti-join by ``groupby(id)``).
Used by :mod:`jobs.quality_aggregate`, which re-exports its public names.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
import ray.data
from ray.data.aggregate import AggregateFnV2, Max, Min

from restore_core import aggregate as agg
from restore_core.config import QualityConfig
from restore_core.quality import SUMMARY_METRICS

#: Ids listed per group in the summary (as ``report.duplicate_groups``).
GROUP_IDS = 20


class PartialAggregate(AggregateFnV2):
    """A Ray Data aggregation whose accumulator is a serialised :class:`restore_core.aggregate.Partial`."""

    def __init__(self, name: str, block_fn: Callable[[pa.Table], agg.Partial], k: int) -> None:
        self._block_fn = block_fn
        self._k = k
        super().__init__(name, zero_factory=lambda: agg.Partial().to_bytes(), on=None, ignore_nulls=False)

    def aggregate_block(self, block: Any) -> bytes:
        from ray.data.block import BlockAccessor

        table = BlockAccessor.for_block(block).to_arrow()
        return self._block_fn(table).to_bytes()

    def combine(self, current_accumulator: bytes, new: bytes) -> bytes:
        a, b = agg.Partial.from_bytes(current_accumulator), agg.Partial.from_bytes(new)
        return a.merge(b, self._k).to_bytes()

    def finalize(self, accumulator: bytes) -> bytes:  # type: ignore[override]
        return accumulator


def _partitions() -> int:
    """Shuffle partitions for the groupbys: a few per CPU (Ray's default of 200 is for big clusters)."""
    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2, min(64, 2 * cpus))


def _floats(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def _metric_columns(table: pa.Table, names: list[str]) -> dict[str, np.ndarray]:
    return {m: _floats(table, m) for m in names if m in table.column_names}


def _where(ds: ray.data.Dataset, keep: Callable[[pa.Table], Any]) -> ray.data.Dataset:
    """The rows of ``ds`` where ``keep(batch)`` (a boolean Arrow array) is true."""
    return ds.map_batches(lambda t: t.filter(keep(t)), batch_format="pyarrow")


def _first_pass(cfg: QualityConfig) -> Callable[[pa.Table], agg.Partial]:
    names = list(dict.fromkeys([*SUMMARY_METRICS, *(c.metric for r in cfg.flags.values() for c in r.all_conditions())]))

    def fn(t: pa.Table) -> agg.Partial:
        return agg.first_pass(
            _metric_columns(t, names),
            t.column("id").to_pylist(),
            t.column("status").to_pylist(),
            list(SUMMARY_METRICS),
            cfg.flags,
            cfg.report.worst_per_flag,
        )

    return fn


def _second_pass(ranges: dict[str, tuple[float, float]]) -> Callable[[pa.Table], agg.Partial]:
    def fn(t: pa.Table) -> agg.Partial:
        return agg.second_pass(_metric_columns(t, list(ranges)), ranges)

    return fn


def _run_partial(ds: ray.data.Dataset, name: str, fn: Callable[[pa.Table], agg.Partial], k: int) -> agg.Partial:
    result = ds.aggregate(PartialAggregate(name, fn, k))
    return agg.Partial.from_bytes(result[name])


def _group_rows(group: pa.Table) -> pa.Table:
    ids = sorted(str(i) for i in group.column("id").to_pylist() if i is not None)
    shas = pc.count_distinct(group.column("sha256")).as_py()
    return pa.table(
        {
            "label": pa.array([group.column("duplicate_group")[0].as_py()], pa.int64()),
            "size": pa.array([group.num_rows], pa.int64()),
            "first": pa.array([ids[0] if ids else ""], pa.string()),
            "ids": pa.array([ids[:GROUP_IDS]], pa.list_(pa.string())),
            "exact": pa.array([shas == 1], pa.bool_()),
        }
    )


def duplicate_groups(ds: ray.data.Dataset, limit: int) -> dict[str, Any]:
    """``report.duplicate_groups``'s result: groups largest first (ties by first id), ``limit`` listed."""
    groups = (
        _where(
            ds.select_columns(["id", "sha256", "duplicate_group"]),
            lambda t: pc.greater_equal(t.column("duplicate_group"), 0),
        )
        .groupby("duplicate_group", num_partitions=_partitions())
        .map_groups(_group_rows, batch_format="pyarrow")
    )
    count = images = 0
    heap: list[tuple[int, _Desc, int, list[str], bool]] = []  # the `limit` largest, smallest on top

    def rows() -> Iterator[dict[str, Any]]:
        for batch in groups.iter_batches(batch_format="pyarrow", batch_size=4096):
            yield from cast(pa.Table, batch).to_pylist()

    for r in rows():
        count += 1
        images += int(r["size"])
        # heap order: smaller size first, then larger first-id first (those drop out first)
        item = (int(r["size"]), _Desc(r["first"]), int(r["label"]), r["ids"], bool(r["exact"]))
        if limit <= 0:
            continue
        if len(heap) < limit:
            heapq.heappush(heap, item)
        elif item[:2] > heap[0][:2]:
            heapq.heapreplace(heap, item)
    listed = sorted(heap, key=lambda g: (-g[0], g[1].value))
    return {
        "count": count,
        "images": images,
        "groups": [{"size": s, "kind": "exact" if e else "near", "ids": list(ids)} for s, _, _, ids, e in listed],
    }


class _Desc:
    """Reverses string order inside a heap tuple."""

    __slots__ = ("value",)

    def __init__(self, value: str) -> None:
        self.value = value

    def __lt__(self, other: _Desc) -> bool:
        return self.value > other.value

    def __gt__(self, other: _Desc) -> bool:
        return self.value < other.value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Desc) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)


def id_changes(
    ds: ray.data.Dataset, previous_flags: str | None, out_fs: Any, examples: int = 10
) -> dict[str, Any] | None:
    """Ids added and removed since the run whose ``flags.parquet`` is ``previous_flags``:
    counts and the first ``examples`` of each (a distributed anti-join; no id list in the driver)."""
    if previous_flags is None:
        return None

    def side(value: int) -> Callable[[pa.Table], pa.Table]:
        def fn(t: pa.Table) -> pa.Table:
            t = t.select(["id"]).filter(pc.is_valid(t.column("id")))
            return t.append_column("side", pa.array(np.full(t.num_rows, value, dtype=np.int8)))

        return fn

    now = ds.select_columns(["id"]).map_batches(side(1), batch_format="pyarrow")
    before = (
        ray.data.read_parquet(previous_flags, filesystem=out_fs)
        .select_columns(["id"])
        .map_batches(side(2), batch_format="pyarrow")
    )
    sides = (
        now.union(before)
        .groupby("id", num_partitions=_partitions())
        .aggregate(Min("side", alias_name="lo"), Max("side", alias_name="hi"))
    )

    def only(t: pa.Table) -> pa.Table:
        lo, hi = t.column("lo").to_numpy(), t.column("hi").to_numpy()
        out = []
        for s, name in ((1, "added"), (2, "removed")):
            ids = t.column("id").filter(pa.array((lo == s) & (hi == s)))
            first = pc.array_sort_indices(ids)[:examples]
            out.append(
                pa.table(
                    {
                        "kind": pa.array([name] * (len(first) or 1)),
                        "n": pa.array([len(ids)] + [0] * (max(len(first), 1) - 1), pa.int64()),
                        "id": pa.array([ids[int(i)].as_py() for i in first.to_pylist()] or [None], pa.string()),
                    }
                )
            )
        return pa.concat_tables(out)

    counts = {"added": 0, "removed": 0}
    firsts: dict[str, list[str]] = {"added": [], "removed": []}
    for batch in sides.map_batches(only, batch_format="pyarrow").iter_batches(batch_format="pyarrow"):
        for r in cast(pa.Table, batch).to_pylist():
            counts[r["kind"]] += int(r["n"])
            if r["id"] is not None:
                firsts[r["kind"]] = heapq.nsmallest(examples, [*firsts[r["kind"]], r["id"]])
    return {
        "ids_added": counts["added"],
        "ids_removed": counts["removed"],
        "examples_added": firsts["added"],
        "examples_removed": firsts["removed"],
    }
