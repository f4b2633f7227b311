"""Timeline of one small first scan: ``audit scan DIR --no-embed --no-cache`` in this process,
with a mark after each stage (where the fixed cost of a scan goes).

    python -P benchmarks/profile_small_scan.py DIR
    PYTHONPATH=/path/to/other/worktree python -P benchmarks/profile_small_scan.py DIR

Marks: the CLI module imported; the command's imports, rules and discovery done; numba
imported and the cached kernel loaded; the images measured; the checks and report.json's dict
done; the three output files written.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time

T0 = time.perf_counter()
MARKS: list[tuple[float, str]] = []


def mark(what: str) -> None:
    MARKS.append((time.perf_counter() - T0, what))


def main() -> None:
    from auditor.cli.app import main as audit

    mark("interpreter, auditor.cli.app (typer, rich)")
    import auditor.pipeline.api as api
    import auditor.report as report
    from auditor.measure import batch

    real_kernels, real_table, real_write = batch.pixel_kernels, api._measure_table, report.write_outputs

    def kernels(*a, **k):
        fresh = not batch._KERNELS
        out = real_kernels(*a, **k)
        if fresh:
            mark("import numba and load the cached kernel")
        return out

    def table(*a, **k):
        mark("the command's imports, rules, discovery")
        out = real_table(*a, **k)
        mark("measure the images")
        return out

    def write(*a, **k):
        mark("checks and report.json's dict")
        out = real_write(*a, **k)
        mark("images.parquet, report.html, report.json")
        return out

    batch.pixel_kernels, api._measure_table, report.write_outputs = kernels, table, write
    with tempfile.TemporaryDirectory() as out:
        sys.argv = ["audit", "scan", sys.argv[1], "--no-embed", "--no-cache", "--out", out, "-q"]
        with contextlib.suppress(SystemExit):
            audit()
    mark("exit")
    print("| step | s |\n|---|---|")
    prev = 0.0
    for t, what in MARKS:
        print(f"| {what} | {t - prev:.2f} |")
        prev = t
    print(f"| total | {prev:.2f} |")


if __name__ == "__main__":
    main()
