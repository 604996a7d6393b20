"""What every job returns, and small helpers shared by jobs."""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass
class Summary:
    """A job's result: a title, numbers a person reads, and where the outputs are."""

    job: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)
    outputs: dict[str, str] = dataclasses.field(default_factory=dict)
    table: str = ""
    exit_code: int = 0
    final_line: str = ""  # printed on stderr after everything else (quality: QUALITY PASS|WARN|FAIL ...)

    def render(self) -> str:
        lines = [f"== {self.job} =="]
        if self.table:
            lines.append(self.table)
        for k, v in self.values.items():
            lines.append(f"{k:>28}: {_fmt(v)}")
        for k, v in self.outputs.items():
            lines.append(f"{k:>28}: {v}")
        return "\n".join(lines)

    def brief(self, n_values: int = 3) -> str:
        """One line: the job, its first ``n_values`` numbers and its first output."""
        numbers = ", ".join(f"{k} {_fmt(v)}" for k, v in list(self.values.items())[:n_values])
        first = next(iter(self.outputs.values()), "")
        return f"{self.job}: {numbers}" + (f" -> {first}" if first else "")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, default=str)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain fixed-width text table."""
    cells = [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join([line, sep, *body])
