"""What changed between two quality runs, as numbers and as sentences a person reads.

Pure functions of two run summaries (``restore_core.quality_summary.summarize``) and the ids of
both runs (or the quality job's distributed anti-join of them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# Drift: what counts as a change worth a sentence.
FLAG_POINTS = 1.0  # a flag's share moved by at least this many percentage points
MEDIAN_RELATIVE = 0.2  # a metric's median moved by at least this share of its previous IQR (or value)


def compare(
    current: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
    current_ids: Sequence[str],
    previous_ids: Sequence[str] | None,
    examples: int = 10,
    id_diff: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What changed since the previous run, as numbers and as sentences a person reads.

    Flags whose share moved by >= ``FLAG_POINTS`` points, metrics whose median moved by >=
    ``MEDIAN_RELATIVE`` of the previous inter-quartile range (or of the previous median when the
    IQR is 0), and the ids added and removed. ``id_diff`` (``ids_added``, ``ids_removed``,
    ``examples_added``, ``examples_removed``, as the quality job's distributed anti-join gives
    them) stands in for the two id lists when given.
    """
    if previous is None:
        return {"previous_run": None, "sentences": ["No earlier finished run to compare with."]}
    sentences: list[str] = []
    flag_changes = _flag_changes(current, previous, sentences)
    metric_changes = _metric_changes(current, previous, sentences)
    n_added, n_removed, added, removed = _id_changes(current_ids, previous_ids, id_diff)
    if n_added or n_removed:
        sentences.append(f"{n_added} images added and {n_removed} removed since {previous['run_date']}.")
    err_delta = current["errors"] - previous.get("errors", 0)
    if err_delta:
        sentences.append(f"Undecodable images went from {previous.get('errors', 0)} to {current['errors']}.")
    if not sentences:
        sentences.append(f"No notable change since {previous['run_date']}.")
    return {
        "previous_run": previous["run_date"],
        "sentences": sentences,
        "flags": flag_changes,
        "metrics": metric_changes,
        "ids_added": n_added,
        "ids_removed": n_removed,
        "examples_added": added[:examples],
        "examples_removed": removed[:examples],
    }


def _flag_changes(
    current: Mapping[str, Any], previous: Mapping[str, Any], sentences: list[str]
) -> dict[str, dict[str, float]]:
    """Each flag's share before and after; a sentence for each that moved by ``FLAG_POINTS``."""
    changes = {}
    for name, f in current["flags"].items():
        before = previous.get("flags", {}).get(name, {}).get("share", 0.0)
        delta = 100 * (f["share"] - before)
        changes[name] = {"before": before, "after": f["share"], "points": delta}
        if abs(delta) >= FLAG_POINTS:
            word = "rose" if delta > 0 else "fell"
            sentences.append(
                f"Flag {name} {word} from {100 * before:.1f}% to {100 * f['share']:.1f}% of images "
                f"({delta:+.1f} points)."
            )
    return changes


def _metric_changes(
    current: Mapping[str, Any], previous: Mapping[str, Any], sentences: list[str]
) -> dict[str, dict[str, float]]:
    """Each metric's median and tails before and after; a sentence for each that moved."""
    changes = {}
    for m, q in current["quantiles"].items():
        pq_ = previous.get("quantiles", {}).get(m)
        if not pq_:
            continue
        scale = pq_["p75"] - pq_["p25"] or abs(pq_["p50"]) or 1.0
        moved = (q["p50"] - pq_["p50"]) / scale
        changes[m] = {
            "p50_before": pq_["p50"],
            "p50_after": q["p50"],
            "p05_before": pq_["p05"],
            "p05_after": q["p05"],
            "p95_before": pq_["p95"],
            "p95_after": q["p95"],
            "moved_iqr": moved,
        }
        tail_moved = _tail_moved(q, pq_, scale)
        if abs(moved) >= MEDIAN_RELATIVE:
            word = "rose" if moved > 0 else "fell"
            sentences.append(f"Median {m} {word} from {pq_['p50']:.4g} to {q['p50']:.4g} ({moved:+.2f} IQR).")
        elif tail_moved:
            sentences.append(f"The {tail_moved} tail of {m} moved while its median held at {q['p50']:.4g}.")
    return changes


def _id_changes(
    current_ids: Sequence[str], previous_ids: Sequence[str] | None, id_diff: Mapping[str, Any] | None
) -> tuple[int, int, list[str], list[str]]:
    """How many ids were added and removed, and the added and removed ids (sorted, or examples)."""
    if id_diff is not None:
        added, removed = list(id_diff["examples_added"]), list(id_diff["examples_removed"])
        return int(id_diff["ids_added"]), int(id_diff["ids_removed"]), added, removed
    cur, prev = set(current_ids), set(previous_ids or ())
    added, removed = sorted(cur - prev), sorted(prev - cur)
    return len(added), len(removed), added, removed


def _tail_moved(q: Mapping[str, float], before: Mapping[str, float], scale: float) -> str:
    if abs(q["p05"] - before["p05"]) / scale >= 2 * MEDIAN_RELATIVE:
        return "low"
    if abs(q["p95"] - before["p95"]) / scale >= 2 * MEDIAN_RELATIVE:
        return "high"
    return ""
