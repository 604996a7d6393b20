"""Where a restored image is written under ``images/`` (output.format images): the row's id as a
safe relative path, its suffix matching the format of the bytes written."""

from __future__ import annotations

import posixpath

from restore_core.io.paths import safe_relpath

#: File-name endings of the formats the restore job writes, the first one being the one given.
_SUFFIXES = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "WEBP": (".webp",), "TIFF": (".tif", ".tiff")}


def sniff_format(data: bytes) -> str:
    """PNG, JPEG, WEBP or TIFF from the first bytes; "" for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    return ""


def image_relpath(row_id: object, data: bytes) -> str:
    """The restored file's path under ``images/``: the id (a safe relative path), its suffix
    replaced when it does not name the format of ``data`` (``a/b.bmp`` written as PNG: ``a/b.png``)."""
    rel = safe_relpath(row_id)
    suffixes = _SUFFIXES.get(sniff_format(data))
    if suffixes is None or rel.lower().endswith(suffixes):
        return rel
    stem, ext = posixpath.splitext(rel)
    return (stem if ext else rel) + suffixes[0]
