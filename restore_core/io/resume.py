"""The resume fingerprint: what a restore job's output depends on, as a flat settings document.

A rerun into the same output folder resumes only when its settings fingerprint equals the one in
``_plan.json``; :func:`changed_settings` names the keys that differ when it does not. The quality
job's incremental runs use the same document (``restore_core.io.file_identity``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

#: Config keys (dotted prefixes) that do not change a restored row: where things are, how Ray
#: runs, and the keys whose *content* is fingerprinted instead of the path (see
#: :func:`settings_document`). Everything else - every fit/mask/decode/sr setting, the method,
#: rows_per_shard, limit, and any key added later - is part of the resume fingerprint.
NOT_RESULT_KEYS = (
    "ray",
    "device",
    "output.path",
    "output.overwrite",
    "input.path",
    "bases",
    "sr.model",
    "refiner",
    "only_flagged",
)


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): node}


def settings_document(
    config: dict[str, Any], artifacts: dict[str, str], exclude: Sequence[str] = NOT_RESULT_KEYS
) -> dict[str, Any]:
    """What the output depends on, as flat ``{"fit.max_iter": 300, ..., "artifact.bases": hash}``.

    Parameters
    ----------
    config : dict
        The job's config as plain data (``dataclasses.asdict``). Every key is kept unless it
        equals or lies under one of ``exclude``, or is a ``storage_options`` entry (credentials
        and endpoints: where the data is, not what it is).
    artifacts : dict
        Content identities that replace paths: artifact content hashes (``"bases"``,
        ``"sr_model"``, a refiner...), the normalised input location, the ids restored. A new
        learned artifact joins the fingerprint by adding its hash here.
    """
    flat = _flatten(config)
    keep = {
        k: v
        for k, v in flat.items()
        if ".storage_options" not in f".{k}" and not any(k == e or k.startswith(e + ".") for e in exclude)
    }
    keep.update({f"artifact.{name}": value for name, value in artifacts.items()})
    return dict(sorted(keep.items()))


def settings_fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_settings(before: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """The keys whose values differ between two settings documents (sorted)."""
    keys = set(before) | set(now)
    return sorted(k for k in keys if json.dumps(before.get(k), default=str) != json.dumps(now.get(k), default=str))
