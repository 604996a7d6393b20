"""A quality run's staged shards (``<staging>/data/*.parquet``), read a few columns at a time.

The run-wide step in the driver (:mod:`restore_core.run_wide`) never holds a whole shard: it
reads only the columns it needs, batch by batch, in one fixed order (the files sorted by name,
then their rows), so arrays built in one pass line up with the batches of the next.
"""

from __future__ import annotations

import posixpath
from collections.abc import Collection, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from restore_core.errors import UserError

#: Rows per batch read from a shard.
BATCH_ROWS = 4096


def shard_files(fs: Any, data_dir: str) -> list[str]:
    """The Parquet files under ``data_dir``, sorted: the order every pass reads them in."""
    files = sorted(p for p in fs.find(data_dir) if p.endswith(".parquet")) if fs.exists(data_dir) else []
    if not files:
        raise UserError(f"the run wrote no shards under {data_dir}: is the input empty?")
    return files


def column_names(fs: Any, files: Sequence[str]) -> list[str]:
    """Every column any of ``files`` holds (a reused shard may lack one that is new)."""
    names: dict[str, None] = {}
    for path in files:
        with fs.open(path, "rb") as f:
            names.update(dict.fromkeys(pq.read_schema(f).names))
    return list(names)


def row_count(fs: Any, files: Sequence[str]) -> int:
    """Rows of ``files``, from their footers."""
    total = 0
    for path in files:
        with fs.open(path, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total


def batches(fs: Any, files: Sequence[str], columns: Sequence[str], rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
    """``columns`` of every row, batch by batch; a column a shard lacks comes as nulls (float64
    for metrics, string otherwise)."""
    for path in files:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            have = [c for c in columns if c in pf.schema_arrow.names]
            for batch in pf.iter_batches(batch_size=rows, columns=have):
                table = pa.Table.from_batches([batch])
                for c in columns:
                    if c not in have:
                        table = table.append_column(c, pa.nulls(table.num_rows, pa.string()))
                yield table.select(list(columns))


def floats(table: pa.Table, name: str) -> np.ndarray:
    """A column as float64 (nulls and strings-only columns as NaN)."""
    col = table.column(name)
    if pa.types.is_string(col.type) or pa.types.is_null(col.type):
        return np.full(table.num_rows, np.nan)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def column(fs: Any, files: Sequence[str], name: str) -> np.ndarray:
    """One numeric column of every row, float64, in the passes' order."""
    return columns(fs, files, [name])[name]


def columns(fs: Any, files: Sequence[str], names: Sequence[str]) -> dict[str, np.ndarray]:
    """A few numeric columns of every row, float64, in the passes' order, read in one pass (each
    shard's footer is read once for them all, not once a column)."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for t in batches(fs, files, list(names), rows=1 << 20):
        for n in names:
            parts[n].append(floats(t, n))
    return {n: np.concatenate(p) if p else np.empty(0) for n, p in parts.items()}


def strings(fs: Any, files: Sequence[str], name: str) -> pa.Array:
    """One text column of every row as a single Arrow array (no Python object per row)."""
    parts = [t.column(name).combine_chunks() for t in batches(fs, files, [name], rows=1 << 20)]
    parts = [p.cast(pa.string()) for p in parts]
    return pa.concat_arrays(parts) if parts else pa.array([], pa.string())


def rows_by_id(
    fs: Any, files: Sequence[str], ids: Collection[str], columns: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """``{id: {column: value}}`` of the rows whose id is among ``ids`` (a few: thumbnails).

    Each shard's ids are read first; only a shard holding one of ``ids`` has ``columns`` read,
    in small batches, so the thumbnails of the other rows never reach memory.
    """
    if not ids:
        return {}
    wanted = pa.array(sorted(ids), pa.string())
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        with fs.open(path, "rb") as f:
            pf = pq.ParquetFile(f)
            for g in range(pf.num_row_groups):
                got = pf.read_row_group(g, columns=["id"]).column("id")
                if not pc.any(pc.is_in(got, value_set=wanted)).as_py():
                    continue
                have = [c for c in columns if c in pf.schema_arrow.names]
                for batch in pf.iter_batches(batch_size=256, row_groups=[g], columns=["id", *have]):
                    hit = batch.filter(pc.is_in(batch.column(0), value_set=wanted))
                    for r in hit.to_pylist():
                        out[r["id"]] = r
    return out


class StreamWriter:
    """A Parquet file written one batch at a time (``flags.parquet``)."""

    def __init__(self, fs: Any, path: str) -> None:
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        self._sink = fs.open(path, "wb")
        self._writer: pq.ParquetWriter | None = None

    def write(self, table: pa.Table) -> None:
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._sink, table.schema)
        self._writer.write_table(table.cast(self._writer.schema))

    def close(self, empty_schema: pa.Schema) -> None:
        try:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._sink, empty_schema)
            self._writer.close()
        finally:
            self._sink.close()
