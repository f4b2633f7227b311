"""Timeline of one small first scan: ``audit scan DIR --no-embed --cache-dir FRESH`` (a new,
empty cache folder: nothing compiled or measured yet) in this process, with a mark after each
stage (where the fixed cost of a scan goes). ``--no-cache`` instead of a fresh cache folder:
``--no-cache`` as the second argument (the compiled kernels and templates then come from the
user's cache folder).

    python -P benchmarks/profile_small_scan.py DIR
    python -P benchmarks/profile_small_scan.py DIR --no-cache
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
        cache = ["--no-cache"] if sys.argv[2:] == ["--no-cache"] else ["--cache-dir", f"{out}/cache"]
        sys.argv = ["audit", "scan", sys.argv[1], "--no-embed", *cache, "--out", f"{out}/report", "-q"]
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
