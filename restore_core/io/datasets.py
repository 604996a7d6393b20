"""Reading image datasets through fsspec: Parquet shards or folders of image files.

Paths are fsspec URLs (local folder, ``s3://``, ``gs://`` with gcsfs, ``hf://`` with
huggingface_hub, ``memory://``). Listing is sorted, so sharding is deterministic.

Hugging Face image columns are structs ``{bytes, path}``; a dataset that points at files has
``bytes`` null. :func:`embed_path_cells` reads those files, relative to the dataset's folder.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import posixpath
from collections.abc import Generator, Iterable, Iterator, Sequence
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from restore_core.errors import UserError
from restore_core.io.locations import Location
from restore_core.io.paths import UnsafePathError, safe_relpath

log = logging.getLogger("restore_core.io.datasets")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".ppm", ".pgm")


def dataset_folder(location: Location) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the folder of the dataset at ``location`` (its parent when it is a file):
    where the relative paths of path-only image cells start."""
    fs, root = location.filesystem()
    root = root.rstrip("/")
    if posixpath.splitext(root)[1].lower() == ".parquet" or fs.isfile(root):
        root = posixpath.dirname(root)
    return fs, root


def is_path_struct(dtype: pa.DataType) -> bool:
    """True for Hugging Face image cells: a struct with a ``bytes`` and a ``path`` field."""
    if not pa.types.is_struct(dtype):
        return False
    names = {dtype.field(i).name for i in range(dtype.num_fields)}
    return {"bytes", "path"} <= names


def resolve_cell_path(fs: fsspec.AbstractFileSystem, root: str, path: str) -> str:
    """The file a path-only cell names, inside the dataset folder ``root``.

    A relative path is joined to ``root``; an absolute path or a URL must already lie under it.
    Anything else (``..``, another bucket, ``/etc/...``) is refused with UnsafePathError: the
    data decide which files are read, so they may not reach outside the dataset.
    """
    if "://" in path or path.startswith("/"):
        inner = fs._strip_protocol(path).rstrip("/")  # the path inside the filesystem
        if root and not inner.startswith(root.rstrip("/") + "/"):
            raise UnsafePathError(f"{path!r} lies outside the dataset folder {root!r}")
        return inner
    rel = safe_relpath(path)
    return f"{root}/{rel}" if root else rel


def embed_path_cells(table: pa.Table, columns: Iterable[str], location: Location) -> pa.Table:
    """Fill the path-only cells (``{bytes: null, path: p}``) of ``columns`` with the files' bytes.

    Paths are read relative to the dataset's folder (see :func:`dataset_folder` and
    :func:`resolve_cell_path`), with the dataset's storage options. A file that
    cannot be read, or lies outside the folder, leaves its cell without bytes: that row becomes
    an error row downstream, and the other rows go on. Other columns and cells are unchanged.
    """
    todo = [c for c in columns if c in table.column_names and is_path_struct(table.schema.field(c).type)]
    if not todo:
        return table
    fs, root = dataset_folder(location)
    for name in todo:
        col = table.column(name).combine_chunks()
        if isinstance(col, pa.ChunkedArray):  # an empty column has no chunk to combine
            continue
        blobs = col.field("bytes").to_pylist()
        paths = col.field("path").to_pylist()
        wanted: dict[int, str] = {}
        for i, (b, p) in enumerate(zip(blobs, paths, strict=True)):
            if b is None and p and col[i].is_valid:
                try:
                    wanted[i] = resolve_cell_path(fs, root, str(p))
                except UnsafePathError:
                    continue
        if not wanted:
            continue
        got = fs.cat(sorted(set(wanted.values())), on_error="return")
        for i, full in wanted.items():
            data = got.get(full)
            if isinstance(data, bytes | bytearray):
                blobs[i] = bytes(data)
        dtype = col.type
        children = [
            pa.array(blobs, dtype.field(k).type) if dtype.field(k).name == "bytes" else col.field(k)
            for k in range(dtype.num_fields)
        ]
        rebuilt = pa.StructArray.from_arrays(
            children, fields=[dtype.field(k) for k in range(dtype.num_fields)], mask=pc.is_null(col)
        )
        table = table.set_column(table.schema.get_field_index(name), table.schema.field(name), rebuilt)
    return table


def list_files(location: Location, fmt: str) -> list[str]:
    """Sorted full paths (without protocol) of the dataset's files; a UserError if none."""
    fs, root = location.filesystem()
    if not fs.exists(root):
        raise UserError(f"input path does not exist: {location.path} (check input.path)")
    if fs.isfile(root):
        files = [root]
    else:
        files = dataset_files(_find_local(root) if is_local(fs) else fs.find(root), fmt)
    files.sort()
    if not files:
        kind = "*.parquet files" if fmt == "parquet" else "image files"
        raise UserError(f"no {kind} under {location.path} (check input.path and input.format)")
    return files


def dataset_files(listed: Iterable[str], fmt: str) -> list[str]:
    """The paths of a folder's listing that are dataset files of ``fmt``: ``*.parquet`` or image
    suffixes, hidden (``.``) and private (``_``) names left out."""
    suffixes = (".parquet",) if fmt == "parquet" else IMAGE_SUFFIXES
    return [p for p in listed if p.lower().endswith(suffixes) and not posixpath.basename(p).startswith((".", "_"))]


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (``file://`` or a plain path)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"file", "local"} & set(protocols))


def _find_local(root: str) -> list[str]:
    """Every file under a local folder, following symlinked folders (``fs.find`` skips them).

    A symlink that leads back to a folder already on the walk (a loop, or a second way into the
    same folder) is not entered again, and is logged; paths keep the names they were reached by,
    so a file's id is its path relative to the root through the link.
    """
    out: list[str] = []
    on_walk: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        key = (st.st_dev, st.st_ino)
        if key in on_walk:  # reached a second time through a symlink: a loop or a duplicate path
            log.warning("not following %s: it leads to a folder already listed (symlink loop?)", dirpath)
            dirnames[:] = []
            continue
        on_walk.add(key)
        dirnames.sort()
        out += [posixpath.join(dirpath, name) for name in filenames]
    return out


def iter_rows(
    location: Location,
    fmt: str,
    id_column: str = "id",
    image_column: str = "image",
    limit: int = 0,
    extra_image_columns: Iterable[str] = (),
) -> Iterator[dict[str, Any]]:
    """Rows as dicts with at least ``id`` and ``image`` (bytes), in a deterministic order.

    Path-only image cells of ``image_column`` and ``extra_image_columns`` are filled with their
    files' bytes (:func:`embed_path_cells`).
    """
    image_columns = (image_column, *extra_image_columns)
    fs, root = location.filesystem()
    count = 0
    for path in list_files(location, fmt):
        if fmt == "images":
            rel = posixpath.relpath(path, root) if path != root else posixpath.basename(path)
            with fs.open(path, "rb") as f:
                rows: Iterator[dict[str, Any]] = iter([{id_column: rel, image_column: f.read()}])
                count = yield from _take(rows, count, limit)
        else:
            # Streamed in small record batches: a caller that wants a few rows reads a few.
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                names = parquet.schema_arrow.names
                missing = {id_column, image_column} - set(names)
                if missing:
                    raise UserError(f"{path} has no column(s) {sorted(missing)} (columns: {names})")
                rows = (
                    row
                    for batch in parquet.iter_batches(batch_size=64)
                    for row in embed_path_cells(pa.Table.from_batches([batch]), image_columns, location).to_pylist()
                )
                count = yield from _take(rows, count, limit)
        if limit and count >= limit:
            return


def _take(rows: Iterator[dict[str, Any]], count: int, limit: int) -> Generator[dict[str, Any], None, int]:
    for row in rows:
        if limit and count >= limit:
            break
        yield row
        count += 1
    return count


# ----------------------------------------------------------------------------- one schema for many files


def parquet_schemas(files: Sequence[str], fs: fsspec.AbstractFileSystem, max_workers: int = 16) -> list[pa.Schema]:
    """The Arrow schema of each Parquet file, from its footer only (threads in parallel)."""

    def read(path: str) -> pa.Schema:
        try:
            with fs.open(path, "rb") as f:
                return pq.read_schema(f)
        except (OSError, pa.ArrowInvalid) as exc:
            raise UserError(
                f"cannot read the Parquet footer of {path} ({exc}); is it a Parquet file, are the credentials right?"
            ) from None

    if len(files) <= 1:
        return [read(p) for p in files]
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(max_workers, len(files))) as pool:
        return list(pool.map(read, files))


def _scalar(tp: pa.DataType) -> bool:
    """Types whose values read naturally as text (numbers, strings, booleans, dates, times)."""
    return bool(
        pa.types.is_integer(tp)
        or pa.types.is_floating(tp)
        or pa.types.is_string(tp)
        or pa.types.is_large_string(tp)
        or pa.types.is_boolean(tp)
        or pa.types.is_decimal(tp)
        or pa.types.is_temporal(tp)
        or pa.types.is_null(tp)
    )


def unified_schema(files: Sequence[str], schemas: Sequence[pa.Schema], id_column: str = "id") -> pa.Schema | None:
    """One schema every file's rows can be cast to, or None when the files already agree.

    Rules: the id column is a string; a column whose types differ takes the type both widen to
    (int32 + int64 -> int64, int + float -> double), else, for plain values (numbers, text,
    booleans, dates), a string; a column missing from some files is null there. Types that
    cannot be reconciled (a struct in one file, an integer in another) are a UserError naming the
    column and the two files.
    """
    if len({s.remove_metadata() for s in schemas}) <= 1:
        return None
    seen: dict[str, list[tuple[str, pa.DataType]]] = {}
    for path, schema in zip(files, schemas, strict=True):
        for field in schema:
            seen.setdefault(field.name, []).append((path, field.type))
    fields = []
    for name, where in seen.items():
        types = list(dict.fromkeys(t for _, t in where))
        target: pa.DataType
        if name == id_column and all(_scalar(t) for t in types):
            target = pa.string()
        elif len(types) == 1:
            target = types[0]
        else:
            try:
                target = (
                    pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in types], promote_options="permissive")
                    .field(name)
                    .type
                )
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                if not all(_scalar(t) for t in types):
                    (f1, t1), (f2, t2) = where[0], next(w for w in where if w[1] != where[0][1])
                    raise UserError(
                        f"column {name!r} is {t1} in {f1} but {t2} in {f2}; give it one type in every input file"
                    ) from None
                target = pa.string()
        fields.append(pa.field(name, target))
    return pa.schema(fields)


def conform(table: pa.Table, schema: pa.Schema | None, where: str = "") -> pa.Table:
    """``table`` cast to ``schema`` (from :func:`unified_schema`): columns it lacks become nulls."""
    if schema is None:
        return table
    columns = []
    for field in schema:
        if field.name not in table.column_names:
            columns.append(pa.nulls(table.num_rows, field.type))
            continue
        col = table.column(field.name)
        if col.type != field.type:
            try:
                col = col.cast(field.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise UserError(f"{where}: column {field.name!r} cannot be read as {field.type} ({exc})") from None
        columns.append(col)
    return pa.table(columns, schema=schema)


def parquet_input_schema(
    location: Location,
    id_column: str = "id",
    image_column: str = "image",
    files: Sequence[str] | None = None,
) -> pa.Schema | None:
    """Check every Parquet file of the input up front and return their :func:`unified_schema`.

    Every file must have the id and image columns (a UserError names the first that lacks one),
    and column types must be reconcilable. Footers only are read. ``files``: these of the input's
    files only (default: all of them).
    """
    files = list(files) if files is not None else list_files(location, "parquet")
    fs, _ = location.filesystem()
    schemas = parquet_schemas(files, fs)
    for path, schema in zip(files, schemas, strict=True):
        missing = [c for c in (id_column, image_column) if c not in schema.names]
        if missing:
            raise UserError(
                f"{path} has no column(s) {missing} (columns: {schema.names}); set input.id_column/image_column"
            )
    return unified_schema(files, schemas, id_column)
