"""The demo's steps as data, and the loop that runs them once.

A :class:`Step` names its output (``marker``), what that output depends on (the steps it reads,
``inputs``, and its own ``settings``), and the job it runs (``action``). :class:`StepCache` skips
a step whose marker exists with the same fingerprint as recorded in ``_demo_state.json``;
:func:`run_steps` runs a list of them in order.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jobs.common import Summary
from jobs.ray_utils import is_verbose

log = logging.getLogger("jobs.demo")


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of the demo: a job whose output is ``marker``."""

    name: str
    marker: str  # a file or folder that exists once the step's output is complete
    action: Callable[[], Any]  # runs the job; a returned Summary is logged
    inputs: tuple[str | None, ...] = ()  # steps whose output this one reads (None: a slot left empty)
    settings: Any = None  # what else the output depends on (JSON-able)
    skip: str = ""  # non-empty: not run, reported as "skipped: <skip>"
    output: str = ""  # restore steps: the folder whose rows join the results table under ``name``

    @property
    def row(self) -> str:
        """The results table's row name of a restore step (``restore nmf`` -> ``nmf``)."""
        return self.name.removeprefix("restore ")


class StepCache:
    """Runs named steps once: a step is skipped when its marker file exists and the fingerprint
    of its settings matches the one recorded in ``_demo_state.json``."""

    def __init__(self, root: str, force: bool) -> None:
        self.force = force
        self.path = os.path.join(root, "_demo_state.json")
        self.state: dict[str, str] = {}
        if os.path.isfile(self.path) and not force:
            with open(self.path, encoding="utf-8") as f:
                self.state = json.load(f)
        self.report: dict[str, str] = {}  # step -> "done in 3.1 s" | "reused" | "skipped: ..."
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    def fingerprint(self, name: str) -> str:
        return self.state.get(name, "")

    def key(self, step: Step) -> Any:
        """What the step's fingerprint is taken of: its inputs' fingerprints, then its settings."""
        if not step.inputs:
            return step.settings
        given = [self.fingerprint(n) if n else "" for n in step.inputs]
        return given if step.settings is None else [*given, step.settings]

    def run(self, step: Step) -> None:
        """Run ``step`` unless its marker exists with the same fingerprint."""
        if step.skip:
            self.report[step.name] = f"skipped: {step.skip}"
            return
        fp = hashlib.sha256(json.dumps(self.key(step), sort_keys=True, default=str).encode()).hexdigest()[:16]
        if not self.force and self.state.get(step.name) == fp and os.path.exists(step.marker):
            self.report[step.name] = "reused"
            log.info("demo: %s reused (%s)", step.name, step.marker)
            return
        t0 = time.perf_counter()
        log.info("demo: %s ...", step.name)
        _log_summary(step.action())
        self.seconds[step.name] = time.perf_counter() - t0
        self.report[step.name] = f"done in {self.seconds[step.name]:.1f} s"
        with self._lock:  # steps may run in two threads (see run_steps)
            self.state[step.name] = fp
            with open(self.path, "w", encoding="utf-8") as f:
                json.dump(self.state, f, indent=2)


def run_steps(cache: StepCache, steps: Sequence[Step], beside: Sequence[Step] = ()) -> None:
    """Run ``steps`` in order in this thread, and ``beside`` in order in a second thread meanwhile.

    On a small machine most of each job is start-up latency (processes importing torch, Ray
    Train's worker group), which overlaps well. Ray's API is thread-safe.
    """
    if not beside:
        for step in steps:
            cache.run(step)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo-steps") as pool:
        other = pool.submit(run_steps, cache, beside)
        run_steps(cache, steps)
        other.result()


def _log_summary(summary: Any) -> None:
    """A step's job summary in the demo's log: one line, or all of it with --verbose."""
    if not isinstance(summary, Summary):
        return
    if not is_verbose():
        log.info("  %s", summary.brief())
        return
    for line in summary.render().splitlines():
        log.info("  %s", line)
