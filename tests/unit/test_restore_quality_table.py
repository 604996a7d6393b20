"""The restore benchmark's table: cells every method restores exactly are marked, not averaged."""

import math

from benchmarks.restore_quality import Row, margins, table


def _rows(kind: str, default: float, bih: float, n: int) -> list[Row]:
    return [
        Row("digits", kind, 0.1, "default", default, 0.99, 10.0, n, 6 - n),
        Row("digits", kind, 0.1, "biharmonic", bih, 0.98, 5.0, n, 6 - n),
    ]


def test_exact_cells_are_marked_and_left_out_of_the_margins():
    rows = _rows("lines", math.inf, math.inf, 0) + _rows("blocks", 21.5, 20.0, 5) + _rows("scattered", 30.0, 30.5, 6)
    lines = table(rows, ["default", "biharmonic"])
    exact = next(ln for ln in lines if "| lines |" in ln)
    assert "exact" in exact and "inf" not in exact and "nan" not in exact
    blocks = next(ln for ln in lines if "| blocks |" in ln)
    assert "+1.50 dB" in blocks and "(5 images: 1 exact left out)" in blocks
    summary = margins(rows)
    assert summary[-1] == "| digits | +0.50 / -0.50 / +1.50 | 1 of 2 | 1 of 2 | 0 |"


def test_the_device_throughput_benchmark_runs_and_prints_its_table(capsys):
    from benchmarks import restore_gpu

    restore_gpu.main(
        [
            "--device",
            "cpu",
            "--batch",
            "1",
            "--size",
            "32",
            "--repeats",
            "1",
            "--skimage-images",
            "1",
            "--sparse-iters",
            "2",
            "--train-budget",
            "0",  # an untrained refiner: the trained one takes 10 minutes (benchmarks/restore_gpu.py)
        ]
    )
    out = capsys.readouterr().out
    assert "| default: refine, calibrated, with the sparse fills |" in out
    assert "| scikit-image biharmonic, one CPU core |" in out and "Device: cpu" in out
