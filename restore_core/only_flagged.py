"""Restoring only the rows a quality run flagged (``restore.only_flagged``).

Re-exported by :mod:`restore_core.quality`. Nothing here imports ray.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np

from restore_core.codec import cell_bytes as _cell_bytes  # the restore step's cell rules


def _objects(values: list[Any]) -> np.ndarray:
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr


def restore_only_flagged(
    restore: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
    batch: dict[str, np.ndarray],
    flagged_ids: Collection[str],
    id_column: str,
    image_column: str,
    output_columns: Sequence[str],
) -> dict[str, np.ndarray]:
    """Run ``restore`` on the flagged rows of ``batch``; pass the other rows through untouched.

    Passed-through rows keep their image bytes as they came (no decode, no re-encode), get
    ``status = "ok"``, ``method = "skipped"``, NaN metrics, 0 sizes and their own byte counts in
    ``bytes_in``/``bytes_out``. Row order is kept.
    ``output_columns`` are the restore step's own columns (pipeline.OUTPUT_COLUMNS).
    """
    ids = batch[id_column]
    n = len(ids)
    hit = np.array([str(i) in flagged_ids for i in ids], dtype=bool)
    if hit.all():
        return restore(batch)
    restored = restore({k: np.asarray(v)[hit] for k, v in batch.items()}) if hit.any() else {}
    images = batch.get(image_column)
    out: dict[str, np.ndarray] = {}
    for name in dict.fromkeys([*output_columns, *restored, *(k for k in batch if k != image_column)]):
        # the passed-through value first, by name, so every batch has the same column types
        col: np.ndarray
        if name == "id":
            col = _objects([str(i) for i in ids])
        elif name == "image":
            col = _objects([_cell_bytes(images[i]) if images is not None else None for i in range(n)])
        elif name == "status":
            col = _objects(["ok"] * n)
        elif name == "method":
            col = _objects(["skipped"] * n)
        elif name in batch and name != image_column:
            col = np.asarray(batch[name]).copy()  # an input column the restore step passes through
        elif name in ("width", "height", "channels"):
            col = np.zeros(n, dtype=np.int64)
        elif name in ("bytes_in", "bytes_out"):  # passed through: the same bytes in and out
            cells = [_cell_bytes(images[i]) if images is not None else None for i in range(n)]
            col = np.asarray([len(c) if c else 0 for c in cells], dtype=np.int64)
        elif name.startswith(("psnr", "ssim", "dead_fraction")) or name == "seconds":
            col = np.full(n, np.nan, dtype=np.float64)
        else:
            col = _objects([None] * n)
        if name in restored:
            part = np.asarray(restored[name])
            if col.dtype != object and part.dtype == object:
                col = col.astype(object)
            col[hit] = part
        out[name] = col
    return out
