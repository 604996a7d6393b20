"""The quality report page, rendered from ``templates/report.html.j2`` with Jinja2.

The template holds the markup, the inline CSS and the image-check script; this module turns a
run's summary into the few lists the template walks over. Autoescaping is on: every id, rule and
sentence is escaped where it lands.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jinja2

from restore_core.io.file_identity import scan_sentence

QUANTILE_KEYS = ("p01", "p05", "p25", "p50", "p75", "p95", "p99")


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("imrestore_report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["fmt"] = format  # {{ x|fmt('.4g') }}: Python's format spec, as the numbers elsewhere
    return env.get_template("report.html.j2")


def render_html(
    summary: Mapping[str, Any],
    plots: Sequence[tuple[str, str]],
    worst: Mapping[str, Sequence[Mapping[str, Any]]],
    group_images: Sequence[Sequence[Mapping[str, Any]]] = (),
) -> str:
    """The report page: what changed (words first), flags, failed limits, plots, worst images, groups.

    ``group_images``: per listed duplicate group, its first members as ``{id, src}`` (``src`` the
    thumbnail's relative path, absent when there is none), shown side by side."""
    drift = summary.get("drift") or {}
    duplicates = summary.get("duplicate_groups", {})
    return _template().render(
        summary=summary,
        scan=scan_sentence(summary["incremental"]) if summary.get("incremental") else "",
        failures=summary.get("failures") or [],
        previous_run=str(drift.get("previous_run") or "the last run"),
        sentences=drift.get("sentences", ["No comparison made."]),
        added=drift.get("examples_added", []),
        removed=drift.get("examples_removed", []),
        flags=_flag_rows(summary, drift),
        quantile_keys=QUANTILE_KEYS,
        metrics=[
            {"name": m, "q": q, "before": drift.get("metrics", {}).get(m, {}).get("p50_before")}
            for m, q in summary["quantiles"].items()
        ],
        plots=plots,
        worst={name: [_with_defaults(r) for r in rows] for name, rows in worst.items()},
        duplicates={"count": duplicates.get("count", 0), "images": duplicates.get("images", 0)},
        groups=_group_rows(duplicates.get("groups", []), group_images),
    )


def _flag_rows(summary: Mapping[str, Any], drift: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per flag: its rule, count, share and limit, the previous run's share (or None)."""
    return [
        {
            **f,
            "name": name,
            "fail": f["share"] > f["max_share"],
            "before": drift.get("flags", {}).get(name, {}).get("before"),
        }
        for name, f in summary["flags"].items()
    ]


def _with_defaults(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"src": None, "error": None, **row}


def _group_rows(
    groups: Sequence[Mapping[str, Any]], group_images: Sequence[Sequence[Mapping[str, Any]]]
) -> list[dict[str, Any]]:
    """Per listed duplicate group: the members shown, the ids not shown, how many more there are."""
    rows = []
    for n, g in enumerate(groups):
        members = [{"src": None, **m} for m in (group_images[n] if n < len(group_images) else [])]
        shown = {m["id"] for m in members}
        rest = [i for i in g["ids"] if i not in shown]
        rows.append(
            {"kind": str(g["kind"]), "size": g["size"], "ids": g["ids"], "members": members, "rest": rest,
             "more": g["size"] - len(shown)}
        )  # fmt: skip
    return rows
