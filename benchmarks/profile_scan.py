"""Where a first scan's time goes: ``audit scan DIR --no-embed --no-cache`` in this process,
with a wall-clock timer around each stage and each check.

    /work/main/.venv/bin/python benchmarks/profile_scan.py benchmarks/data/speed --workers 2

Stages: imports (``auditor.pipeline.api`` and what it pulls in), discovery, measurement (the
worker pool: decode, pixel properties, hashes, thumbnails, store writes), the checks (one row
per check that took at least 10 ms), building report.json's dict, and writing the outputs
(images.parquet, report.html, report.json). The rows do not add up to the total exactly:
the rest is the CLI around them (option parsing, the rules, closing the store). ``--cprofile
FILE`` also writes a cProfile of the parent process (the workers' time shows as waiting);
``--cache-dir DIR`` scans with that cache (run twice: the second run profiles the checks and
the report alone).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from collections import defaultdict

T0 = time.perf_counter()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dataset")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--cprofile", default=None)
    ap.add_argument("--cache-dir", default=None, help="use this cache (a second run measures nothing: checks alone)")
    args = ap.parse_args()

    times: dict[str, float] = defaultdict(float)
    t = time.perf_counter()
    from auditor.pipeline import api

    times["imports (auditor.pipeline.api)"] = time.perf_counter() - t

    def timed(name, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                times[name] += time.perf_counter() - t

        return wrapper

    import auditor.report as report_pkg
    from auditor.checks import catalog

    api.discover = timed("discover", api.discover)
    api._measure_table = timed("measure (worker pool, store writes, table)", api._measure_table)
    api.build_table = timed("items table", api.build_table)
    api.check_context = timed("check context", api.check_context)
    api.build_report = timed("build report dict", api.build_report)
    report_pkg.write_outputs = timed("write outputs (parquet, html, json)", report_pkg.write_outputs)
    real_load_all = catalog.load_all

    def load_all():
        registry = dict(real_load_all())
        for name, spec in registry.items():
            registry[name] = dataclasses.replace(spec, fn=timed(f"check {name}", spec.fn))
        return registry

    api.load_all = load_all
    profiler = None
    if args.cprofile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        api.scan(
            args.dataset,
            out,
            embed=False,
            use_cache=args.cache_dir is not None,
            cache_dir=args.cache_dir,
            workers=args.workers,
        )
        total = time.perf_counter() - t
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.cprofile)
    rows = sorted(((v, k) for k, v in times.items() if v >= 0.01 or not k.startswith("check ")), reverse=True)
    print("| stage | s |\n|---|---|")
    for v, k in rows:
        print(f"| {k} | {v:.2f} |")
    print(f"| **scan call total** | {total:.2f} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
