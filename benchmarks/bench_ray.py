"""``--engine local`` against ``--engine ray`` with 1 and 2 worker processes, in one run.

    .venv/bin/python benchmarks/bench_ray.py                      # 2,000 images, --no-embed, 3 repeats
    .venv/bin/python benchmarks/bench_ray.py --n-images 500 --embed --repeats 1

Every run is a first scan (``--no-cache``: nothing measured before) of the images of
``bench_speed.py`` (``--n-images`` JPEG crops of real photos, 256-640 px), in a fresh process,
through the same function as ``audit scan`` (:func:`auditor.scan`): local with ``workers`` =
1 and 2 (a process pool), and Ray with a new local instance of 1 and 2 CPUs (``--engine ray
--workers N``: Ray's start and stop are inside the time). The configurations alternate,
``--repeats`` times; the table gives medians of the whole scan and of its per-image stage
(first to last progress tick of measuring, on Ray and on the driver), and each engine's
speed-up from 1 to 2 workers. Every scan's report.json must be the same bytes. The compiled
measurement kernels are cached once before timing (``AUDITOR_CACHE_DIR`` in the temporary
folder), so no run pays numba's compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_speed import make_images  # noqa: E402

#: One scan in a fresh process: prints {"stages": {stage: [first tick, last tick]}} (seconds
#: since the scan started).
SCAN = """
import json, sys, time
from auditor import scan
dataset, out, engine, workers, embed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5] == "1"
rules = sys.argv[6] or None
ticks = {}
t0 = time.perf_counter()
def progress(stage, n, total):
    now = time.perf_counter() - t0
    ticks.setdefault(stage, [now, now])[1] = now
scan(dataset, out, engine=engine, workers=workers, embed=embed, projection=False, use_cache=False, rules=rules,
     progress=progress)
print(json.dumps({"stages": ticks, "scan": time.perf_counter() - t0}))
"""

CONFIGS = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]


def run(folder: Path, out: Path, engine: str, workers: int, embed: bool, env: dict, rules: str) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SCAN, str(folder), str(out), engine, str(workers), str(int(embed)),
                           rules], env=env, capture_output=True, text=True)  # fmt: skip
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"scan failed ({engine}, {workers}): {proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    measure = [v for k, v in result["stages"].items() if k.startswith("measure")]
    result["wall"] = wall
    result["measure"] = max(v[1] for v in measure) - min(v[0] for v in measure) if measure else float("nan")
    result["report"] = (out / "report.json").read_bytes()
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--embed", action="store_true", help="embed too (EfficientNet-Lite0); default --no-embed")
    ap.add_argument("--data", type=Path, default=ROOT / "benchmarks" / "data" / "speed2k")
    ap.add_argument("--rules", default="", help="rules file [default: the default preset]")
    args = ap.parse_args()
    make_images(args.data, args.n_images, args.seed)
    times: dict[tuple[str, int], list[dict]] = {c: [] for c in CONFIGS}
    reports = set()
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "AUDITOR_CACHE_DIR": str(Path(tmp) / "cache")}
        env.pop("RAY_ADDRESS", None)  # a local instance of exactly N CPUs, whatever cluster is around
        subprocess.run([sys.executable, "-c", "from auditor.measure.batch import pixel_kernels; pixel_kernels()"],
                       env=env, check=True)  # fmt: skip
        for r in range(args.repeats):
            for engine, workers in CONFIGS:
                out = Path(tmp) / f"out-{engine}-{workers}-{r}"
                res = run(args.data, out, engine, workers, args.embed, env, args.rules)
                times[(engine, workers)].append(res)
                reports.add(res["report"])
                print(f"repeat {r + 1}: {engine} x{workers}: {res['wall']:.1f} s (measure {res['measure']:.1f} s)",
                      file=sys.stderr, flush=True)  # fmt: skip
    if len(reports) != 1:
        raise SystemExit(f"the engines wrote {len(reports)} different report.json files")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"{args.n_images} images ({'with' if args.embed else 'without'} embeddings), median of {args.repeats}; "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), load average at the end {load}; "
          f"Python {platform.python_version()}; every report.json identical\n")  # fmt: skip
    print("| engine | workers | whole scan (s) | measure stage (s) | images/s (measure) | speed-up 1 -> 2 (measure) |")
    print("|---|---|---|---|---|---|")
    for engine, workers in CONFIGS:
        wall = statistics.median(x["wall"] for x in times[(engine, workers)])
        measure = statistics.median(x["measure"] for x in times[(engine, workers)])
        one = statistics.median(x["measure"] for x in times[(engine, 1)])
        speedup = f"{one / measure:.2f}x" if workers > 1 else ""
        print(f"| {engine} | {workers} | {wall:.1f} | {measure:.1f} | {args.n_images / measure:.0f} | {speedup} |")


if __name__ == "__main__":
    main()
