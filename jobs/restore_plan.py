"""The restore job's preflight: everything the user can get wrong fails here, before Ray starts.

:func:`preflight` checks the config, plans the shards, reads the input's schema, loads and
validates the artifacts (bases, SR model, refiner) directly, checks the first image against the
bases, probes the output and computes the resume fingerprint; the result is a
:class:`RestorePlan`. :func:`resume` then (under the output's lease) turns it into the shards
still to write. Nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from typing import Any

import pyarrow as pa

from jobs.config_restore import RestoreJobConfig
from restore_core import checks
from restore_core.bases import Bases
from restore_core.config import RestoreConfig, check_ranges, to_dict
from restore_core.device import resolve_device
from restore_core.errors import UserError
from restore_core.io import datasets, locations, sr_models
from restore_core.io import shards as shard_io
from restore_core.io.artifacts import load_bases, load_sr_model
from restore_core.io.refiners import RefinerArtifact, build_from_artifact, load_refiner
from restore_core.io.runs import read_flagged_ids
from restore_core.pipeline import resolve_method

log = logging.getLogger("jobs.restore")


@dataclasses.dataclass(frozen=True)
class RestorePlan:
    """What a restore run will do, checked: the config, the shards, and the validated artifacts."""

    cfg: RestoreJobConfig
    shards: list[shard_io.Shard]  # every shard of the output (after resume: the folder's own plan)
    schema: pa.Schema | None  # the input's one schema (files whose column types differ are read as it)
    bases: Bases | None
    sr_artifact: Any  # an SRArtifact, or None when SR is off
    refiner: RefinerArtifact | None
    flagged: frozenset[str] | None  # restore.only_flagged: the ids to restore; None = every row
    out: shard_io.OutputFolder
    fingerprint: str  # of every setting a restored row depends on (the resume check)
    method: str  # fit.method resolved (auto -> learned or sparse)
    started: float  # time.perf_counter() when the job started

    def pending(self) -> list[shard_io.Shard]:
        """The shards not committed yet."""
        done = self.out.committed()
        return [s for s in self.shards if s.index not in done]


# ----------------------------------------------------------------------------- checks


def check_config(cfg: RestoreJobConfig) -> None:
    """Refuse configurations that cannot work, with one line naming the key to fix."""
    check_ranges(cfg)  # the loader checks these too; a config built in code gets the same checks
    if not cfg.input.path:
        raise UserError("input.path is empty: point it at the images to restore (Parquet files or a folder)")
    if not cfg.output.path:
        raise UserError("output.path is empty: set it to the folder (or s3://bucket/prefix) for the restored shards")
    if locations.is_process_local(cfg.output.path):
        raise UserError(
            "output.path memory:// lives in one process; Ray workers cannot write it: use a folder or s3://"
        )
    if cfg.output.format == "images" and cfg.input.format != "images":
        raise UserError("output.format images needs input.format images (a folder tree to mirror); use parquet")
    if cfg.fit.method in ("nmf", "reference") and not cfg.bases:
        raise UserError(f"fit.method {cfg.fit.method} needs bases: set 'bases' to a learn-bases artifact folder")
    if cfg.fit.method == "learned" and not cfg.refiner:
        raise UserError("fit.method learned needs a refiner: set 'refiner' to a train-inpaint artifact folder")
    if cfg.sr.enabled and not cfg.sr.model:
        raise UserError("sr.enabled is true but sr.model is empty: set it to a train-sr artifact folder")
    # Never write into what the job reads, however either is spelled (and no credentials in URLs).
    reads = [("input.path", cfg.input.path), ("bases", cfg.bases if cfg.fit.method in ("nmf", "reference") else "")]
    reads += [("sr.model", cfg.sr.model if cfg.sr.enabled else ""), ("only_flagged", cfg.only_flagged)]
    locations.check_apart(reads, [("output.path", cfg.output.path)])


def resume_settings(
    cfg: RestoreConfig,
    bases: Bases | None,
    sr_artifact: Any,
    flagged: frozenset[str] | None,
    refiner: RefinerArtifact | None = None,
    *,
    method: str = "",
    redacted: bool = False,
) -> dict[str, Any]:
    """Everything a restored row depends on, for the resume fingerprint (see ``shard_io.settings_document``).

    Every config key counts except where things live and how Ray runs (``shard_io.NOT_RESULT_KEYS``),
    so a setting added later is covered without a change here. Paths of learned artifacts are
    replaced by their content hashes: a new artifact (a refiner model, say) joins by adding its
    hash to ``artifacts`` below. The input's listing is *not* part of it: a grown input resumes
    and restores only the new files. ``redacted`` gives the copy stored in ``_plan.json``.
    ``method`` is ``fit.method`` resolved: under ``auto`` it counts as ``fit.method_auto`` (what
    ``auto`` means has changed between versions, e.g. ``fill`` -> ``sparse`` without a refiner; a
    folder started with one must not be finished with the other). ``learned`` is left out: its
    refiner's hash already counts, and folders started by earlier versions keep resuming.
    """
    artifacts = {"input": ":".join(cfg.input.location.key())}  # the path normalised, never its options
    if bases is not None:
        artifacts["bases"] = f"{bases.fingerprint()} {bases.meta.describe()}"
    if sr_artifact is not None:
        artifacts["sr_model"] = sr_artifact.fingerprint()
    if refiner is not None:  # other weights make other output: never mixed in one folder
        artifacts["refiner"] = refiner.fingerprint()
    if flagged is not None:
        artifacts["only_flagged_ids"] = hashlib.sha256("\n".join(sorted(flagged)).encode()).hexdigest()[:16]
    config = to_dict(cfg) if redacted else dataclasses.asdict(cfg)
    if cfg.fit.method == "auto" and method and method != "learned":
        config = {**config, "fit": {**config["fit"], "method_auto": method}}
    return shard_io.settings_document(config, artifacts)


# ----------------------------------------------------------------------------- artifacts


def load_sr_artifact(cfg: RestoreConfig) -> Any:
    """The validated SR artifact (weights as arrays + meta), or None when SR is off."""
    if not cfg.sr.enabled:
        return None
    artifact = load_sr_model(cfg.sr.model_location)
    sr_models.model_from_artifact(artifact)  # the weights fit the architecture in meta.json
    return artifact


def load_refiner_artifact(cfg: RestoreJobConfig) -> RefinerArtifact | None:
    """The validated refiner artifact when the method uses it (``auto`` or ``learned`` with
    ``refiner`` set), else None."""
    if not cfg.refiner or cfg.fit.method not in ("auto", "learned"):
        if cfg.refiner:
            log.info("fit.method %s does not use the refiner %s", cfg.fit.method, cfg.refiner)
        return None
    artifact = load_refiner(cfg.refiner_location)
    gain = artifact.held_out_gain_db
    if cfg.fit.method == "auto" and gain is not None and gain <= 0:
        # A refiner that did not beat its own fill on held-out damaged rows would make the output
        # worse than the fill it starts from: the default never uses it (learned forces it).
        log.warning(
            "the refiner %s gained %+.2f dB over its fill on held-out pixels in training: fit.method auto "
            "restores without it (set fit.method: learned to use it anyway)",
            cfg.refiner,
            gain,
        )
        return None
    return artifact


def check_refiner_bases(cfg: RestoreJobConfig, refiner: RefinerArtifact | None, bases: Bases | None) -> None:
    """A refiner that takes NMF bases as an input needs the very bases it was trained with."""
    wanted = refiner.bases_fingerprint if refiner is not None else ""
    if not wanted:
        return
    if bases is None:
        raise UserError(
            f"the refiner {cfg.refiner} takes NMF bases as an input: set 'bases' to the learn-bases artifact it was "
            "trained with"
        )
    if bases.fingerprint() != wanted:
        raise UserError(
            f"the refiner {cfg.refiner} was trained with other bases (fingerprint {wanted}) than {cfg.bases} "
            f"({bases.fingerprint()}): set 'bases' to the ones it was trained with"
        )


def _load_bases(cfg: RestoreConfig, refiner: RefinerArtifact | None) -> Bases | None:
    """The validated bases when the method uses them (the learned method: when its refiner takes them)."""
    if refiner is not None:
        needs_bases = bool(refiner.bases_fingerprint)
    else:
        needs_bases = cfg.fit.method in ("nmf", "reference")
        if cfg.bases and cfg.fit.method == "auto":
            log.warning(
                "bases %s are set, but fit.method auto without a refiner restores with sparse, which does not use "
                "them: set fit.method: nmf to restore with the bases",
                cfg.bases,
            )
        elif cfg.bases and not needs_bases:
            log.info("fit.method %s does not use the bases %s", cfg.fit.method, cfg.bases)
    # (bases "" with a refiner that takes bases: check_refiner_bases says so in its words)
    return load_bases(cfg.bases_location) if needs_bases and cfg.bases else None


def _check_first_image(cfg: RestoreConfig, bases: Bases) -> None:
    """Bases made for another image size or channel count would fail every row: say so once."""
    icfg = cfg.input
    rows = datasets.iter_rows(icfg.location, icfg.format, icfg.id_column, icfg.image_column, limit=8)
    shape = checks.first_image_shape(rows, icfg.image_column, cfg.decode.max_pixels)
    if shape is not None:
        checks.check_bases_fit(bases.meta, shape, where=icfg.path, bases_url=cfg.bases)


def _check_method(cfg: RestoreConfig, bases: Bases | None, refiner: RefinerArtifact | None) -> str:
    """The resolved method, refused when its artifacts are missing or do not fit together."""
    method = resolve_method(cfg.fit.method, bases is not None, refiner is not None)
    resolve_device(cfg.device)  # device: cuda without a GPU is one line here, not an error in every actor
    if refiner is not None:
        build_from_artifact(refiner)  # the weights fit the spec in meta.json
        if method == "learned" and refiner.spec().use_bases and bases is None:
            raise UserError("this refiner takes the NMF bases as an input: set 'bases' to its learn-bases artifact")
    if method in ("nmf", "reference") and bases is None:
        raise UserError(f"fit.method {method} needs bases: set 'bases' to a learn-bases artifact")
    return method


# ----------------------------------------------------------------------------- the plan


def preflight(cfg: RestoreJobConfig) -> RestorePlan:
    """Check everything and load the artifacts; the plan's shards are the input's, before resume."""
    started = time.perf_counter()
    check_config(cfg)
    shards = shard_io.plan_shards(cfg.input, cfg.output.rows_per_shard)
    if not shards:
        raise UserError(f"no rows in {cfg.input.path} (every Parquet file is empty?)")
    schema = shard_io.input_schema(cfg.input)
    refiner = load_refiner_artifact(cfg)
    bases = _load_bases(cfg, refiner)
    check_refiner_bases(cfg, refiner, bases)
    sr_artifact = load_sr_artifact(cfg)
    flagged = read_flagged_ids(cfg.only_flagged_location, cfg.only_flagged_flags) if cfg.only_flagged else None
    method = _check_method(cfg, bases, refiner)
    if bases is not None:
        _check_first_image(cfg, bases)
    out = shard_io.OutputFolder(cfg.output.location)
    out.check_writable()
    settings = resume_settings(cfg, bases, sr_artifact, flagged, refiner, method=method)
    fingerprint = shard_io.settings_fingerprint(settings)
    return RestorePlan(cfg, shards, schema, bases, sr_artifact, refiner, flagged, out, fingerprint, method, started)


def resume(plan: RestorePlan) -> RestorePlan:
    """The plan to run (call it holding the output's lease): a fresh one, written to ``_plan.json``,
    or the folder's own, extended with new input. Refuses a folder holding files restore did not
    write, and one made with other settings."""
    cfg, out = plan.cfg, plan.out
    shown = resume_settings(
        cfg, plan.bases, plan.sr_artifact, plan.flagged, plan.refiner, method=plan.method, redacted=True
    )
    previous = _previous_plan(cfg, out)
    log.debug(
        "settings fingerprint %s over %d settings; %d shards planned", plan.fingerprint, len(shown), len(plan.shards)
    )
    if previous is None:
        out.write_json(shard_io.PLAN_FILE, {"fingerprint": plan.fingerprint, "settings": shown, **_plan_doc(plan)})
        return plan
    if previous.get("fingerprint") != plan.fingerprint:
        changed = shard_io.changed_settings(previous.get("settings") or {}, shown)
        what = (
            f"other settings ({', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})"
            if previous.get("settings") and changed
            else "other settings or an older version of restore"
            if previous.get("settings") is None
            else "other artifacts or settings"
        )
        raise UserError(
            f"{out.url} holds output made with {what}; rerun with --overwrite (or set output.overwrite: true) "
            "to replace it, or choose another output.path"
        )
    before = shard_io.shards_from_document(previous)
    if cfg.input.limit:
        return dataclasses.replace(plan, shards=before)  # the first rows, as planned when the output was started
    step = cfg.output.rows_per_shard or shard_io.IMAGES_PER_SHARD
    merged = shard_io.merge_plans(before, plan.shards, out.committed(), cfg.input.format, step)
    if merged != before:
        added = len({s.index for s in merged} - {s.index for s in before})
        log.info("the input changed since the first run: %d new shards, %d in all (%s)", added, len(merged), out.url)
        out.write_json(shard_io.PLAN_FILE, {**previous, **_plan_doc(dataclasses.replace(plan, shards=merged))})
    return dataclasses.replace(plan, shards=merged)


def _previous_plan(cfg: RestoreConfig, out: shard_io.OutputFolder) -> dict[str, Any] | None:
    """The folder's ``_plan.json`` (None when absent, or deleted by ``--overwrite``)."""
    try:
        previous = out.read_json(shard_io.PLAN_FILE)
    except (ValueError, UnicodeDecodeError):
        previous = {"unreadable": True}
    if previous is not None and not shard_io.is_plan_document(previous):
        raise UserError(
            f"output.path {out.url} holds a {shard_io.PLAN_FILE} restore did not write: choose an empty output folder"
        )
    if cfg.output.overwrite:
        deleted = out.clear(previous)
        if deleted:
            log.info("--overwrite: deleted %d files an earlier run wrote in %s", deleted, out.url)
        return None
    out.refuse_foreign(previous, "write into it")
    return previous


def _plan_doc(plan: RestorePlan) -> dict[str, Any]:
    return shard_io.plan_document(plan.shards, plan.cfg.input, plan.cfg.output.rows_per_shard)
