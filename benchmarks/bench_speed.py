"""Scan speed: ``audit scan --no-embed`` vs CleanVision on the same folder of JPEGs,
plus audit's rescan speed-up from its measurement cache.

Setup (once; CleanVision lives in its own venv so it cannot disturb the dev venv):

    python3 -m venv /work/main/.venv-bench
    /work/main/.venv-bench/bin/pip install cleanvision

Run from the repository root, with the dev venv (it provides ``auditor.demo.synth`` for the
images and the ``audit`` CLI):

    /work/main/.venv/bin/python benchmarks/bench_speed.py
    /work/main/.venv/bin/python benchmarks/bench_speed.py --n-images 200 --repeats 1   # quick
    # issue 17 part 4a: 112-px PNGs and 300-500 px JPEGs, this commit against an older one
    /work/main/.venv/bin/python benchmarks/bench_speed.py --kind png --n-images 10000 \
        --skip-rescan --embed-rescan-repeats 0 --current HEAD --baseline 02e1a31

How it is measured
------------------
* Images: ``--n-images`` (default 1000) JPEGs in ``benchmarks/data/speed/`` (flat, gitignored),
  made with numpy ``default_rng(--seed)``: a random crop (30-100 % of each side) of one of
  ``synth.COLOR_PHOTOS``, resized so its longer side is 256-640 px, randomly mirrored, JPEG
  quality 70-95. Regenerated only if the folder does not hold exactly the expected files.
  ``--kind png`` writes lossless PNGs instead, ``--sides MIN MAX`` sets the longer side's
  range (default 112 112 for PNGs); other sets go to ``benchmarks/data/speed-KIND-MIN-MAX-N``.
* ``--baseline REV`` also times that revision's audit (a git worktree run with this venv),
  ``--current REV`` times a revision instead of the working tree: each scanned once before
  timing (numba caches compiled kernels per source file, so a fresh worktree compiles).
* Both tools run as child processes and are timed wall-clock from the parent, so each figure
  includes interpreter start-up and imports:
    - audit:       ``.venv/bin/audit scan DIR --no-embed --no-cache --out TMP --workers W -q``
                   (``--no-cache`` makes every run a first scan; writes the full report).
    - CleanVision: ``.venv-bench/bin/python -c '<Imagelab(data_path=DIR).find_issues(n_jobs=W)>'``
                   with its default issue types (dark, light, odd_aspect_ratio, low_information,
                   exact_duplicates, near_duplicates, blurry, grayscale, odd_size). The child
                   also reports the time spent inside ``find_issues`` alone (column "in-call").
  W = ``--workers`` (default: all cores, ``os.sched_getaffinity``). Runs alternate
  (audit, CleanVision, audit, ...) ``--repeats`` times; the table gives medians.
* Rescan: per repeat, a fresh empty ``--cache-dir`` and three runs of
  ``audit scan DIR --no-embed --rules R --cache-dir CACHE --out TMP -q`` (default worker
  count): R = default (first scan), default again (unchanged: the recorded outputs are
  reused, see ``auditor/io/reuse.py``), then lenient (other rules: no reuse, but every
  measurement comes from the cache; the checks and the report run again). The speed-up is
  first / second; the third column shows the measurement cache alone.
* Default-scan rescan (``--embed-rescan-repeats``, default 1): the same images hard-linked
  as ``train/`` (80%) and ``val/`` (20%), scanned twice the default way (embeddings, the
  train-vs-val shift analysis and the UMAP projection) with a fresh cache.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
AUDIT = ROOT / ".venv" / "bin" / "audit"
BENCH_PY = ROOT / ".venv-bench" / "bin" / "python"

CLEANVISION_CHILD = """
import sys, time
t0 = time.perf_counter()
from cleanvision import Imagelab
lab = Imagelab(data_path=sys.argv[1])
t1 = time.perf_counter()
lab.find_issues(n_jobs=int(sys.argv[2]), verbose=False)
t2 = time.perf_counter()
print(f"CV_TIMES {t1 - t0:.4f} {t2 - t1:.4f} {int(lab.issue_summary['num_images'].sum())}")
"""


# -- data --------------------------------------------------------------------------


def make_images(folder: Path, n: int, seed: int, kind: str = "jpeg", sides: tuple[int, int] = (256, 640)) -> list[Path]:
    """Write ``n`` images (random crops/resizes of the shipped photos) into ``folder``:
    ``kind`` "jpeg" (longer side uniform in ``sides``, quality 70-95) or "png" (lossless)."""
    from auditor.demo import synth

    ext = {"jpeg": "jpg", "png": "png"}[kind]
    expected = [folder / f"img_{i:05d}.{ext}" for i in range(n)]
    if folder.is_dir() and sorted(folder.iterdir()) == expected:
        return expected
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        p.unlink()
    rng = np.random.default_rng(seed)
    photos = [synth.load_photo(name) for name in synth.COLOR_PHOTOS]
    for path in expected:
        photo = photos[int(rng.integers(len(photos)))]
        h, w = photo.shape[:2]
        ch, cw = (max(16, int(s * rng.uniform(0.3, 1.0))) for s in (h, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        crop = photo[y : y + ch, x : x + cw]
        long_side = int(rng.integers(sides[0], sides[1] + 1))
        scale = long_side / max(ch, cw)
        size = (max(1, round(cw * scale)), max(1, round(ch * scale)))
        img = Image.fromarray(np.ascontiguousarray(crop)).resize(size, Image.Resampling.LANCZOS)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if kind == "png":
            img.save(path, "PNG")
        else:
            path.write_bytes(synth.jpeg_bytes(np.asarray(img), quality=int(rng.integers(70, 96))))
    return expected


def data_folder(kind: str, sides: tuple[int, int], n: int) -> Path:
    """The default folder of a data set: ``speed`` for the original one (1,000 JPEGs,
    256-640 px), else named by its parameters (make_images only checks file names)."""
    if (kind, sides, n) == ("jpeg", (256, 640), 1000):
        return ROOT / "benchmarks" / "data" / "speed"
    return ROOT / "benchmarks" / "data" / f"speed-{kind}-{sides[0]}-{sides[1]}-{n}"


# -- runners -------------------------------------------------------------------------


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"command failed (rc={out.returncode}): {' '.join(cmd)}\n{out.stdout}\n{out.stderr}")
    return wall, out.stdout


#: ``python -c`` entry point of the auditor in any revision (auditor.cli was one module before it was a package).
AUDIT_MAIN = "try:\n    from auditor.cli.app import main\nexcept ImportError:\n    from auditor.cli import main\nmain()"


def run_audit(folder: Path, workers: int, tmp: Path, tree: Path | None = None, fresh_cache: bool = False) -> float:
    """Wall time of one first scan; ``tree``: run that checkout of the auditor instead (a
    worktree of ``--baseline``, first on ``PYTHONPATH``, the same interpreter and packages).
    ``--no-cache`` (compiled kernels and templates from the user's cache folder), or with
    ``fresh_cache`` a new empty ``--cache-dir`` (nothing compiled or measured yet)."""
    out = tempfile.mkdtemp(prefix="audit-out-", dir=tmp)
    cache = ["--cache-dir", tempfile.mkdtemp(prefix="audit-cache-", dir=tmp)] if fresh_cache else ["--no-cache"]
    args = ["scan", str(folder), "--no-embed", *cache, "--out", out, "--workers", str(workers), "-q"]
    if tree is None:
        return timed([str(AUDIT), *args])[0]
    # -P: no current folder on sys.path (run from the repository root, it would import this tree)
    cmd = [str(AUDIT.parent / "python"), "-P", "-c", AUDIT_MAIN, *args]
    return timed(cmd, env={**os.environ, "PYTHONPATH": str(tree)})[0]


@contextlib.contextmanager
def baseline_tree(rev: str | None, tmp: Path, warm_folder: Path | None, workers: int, name: str = "baseline"):
    """A detached worktree of ``rev`` (None: none), scanned once on ``warm_folder`` (None:
    not) before it is timed (its compiled kernels are cached per file: the first scan compiles)."""
    if rev is None:
        yield None
        return
    tree = tmp / name
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
                   check=True, capture_output=True)  # fmt: skip
    try:
        if warm_folder is not None:
            run_audit(warm_folder, workers, tmp, tree)
        yield tree
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)


def run_cleanvision(folder: Path, workers: int) -> tuple[float, float, float, int]:
    """(wall, import+init, find_issues, images flagged)."""
    wall, stdout = timed([str(BENCH_PY), "-c", CLEANVISION_CHILD, str(folder), str(workers)])
    line = next(ln for ln in stdout.splitlines() if ln.startswith("CV_TIMES"))
    _, init, call, flagged = line.split()
    return wall, float(init), float(call), int(flagged)


def run_rescan(folder: Path, tmp: Path, embed: bool = False) -> tuple[float, float, float]:
    """(first scan, unchanged rescan, rescan under other rules) with one fresh cache."""
    cache = tempfile.mkdtemp(prefix="audit-cache-", dir=tmp)
    times = []
    for rules in ("default", "default", "lenient"):
        out = tempfile.mkdtemp(prefix="audit-out-", dir=tmp)
        flags = [] if embed else ["--no-embed"]
        cmd = [str(AUDIT), "scan", str(folder), *flags, "--rules", rules, "--cache-dir", cache, "--out", out, "-q"]
        times.append(timed(cmd)[0])
    return times[0], times[1], times[2]


def split_copy(files: list[Path], tmp: Path) -> Path:
    """The same images as train/ (80%) and val/ (20%) hard links: a dataset whose default
    scan also runs the split comparison and the UMAP projection."""
    root = tmp / "split"
    for i, f in enumerate(files):
        dest = root / ("train" if i % 5 else "val") / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.link(f, dest)
    return root


# -- report --------------------------------------------------------------------------


def sh(cmd: str) -> str:
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.rstrip()
    except OSError:
        return "?"


def machine() -> str:
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    versions = sh(f"{BENCH_PY} -m pip list 2>/dev/null | grep -i -E '^(cleanvision|numpy|pillow|imagehash) '")
    return "\n".join([
        f"- `nproc`: {sh('nproc')}  (CPU: {cpu})",
        f"- `free -h`:\n```\n{sh('free -h')}\n```",
        f"- `python -V`: {platform.python_version()} ({sys.executable}); bench venv: {sh(f'{BENCH_PY} -V')}",
        f"- platform: {platform.platform()}",
        "- bench venv packages: " + ", ".join(" ".join(v.split()) for v in versions.splitlines()),
    ])  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--kind", choices=("jpeg", "png"), default="jpeg", help="image format of the data set")
    ap.add_argument("--sides", type=int, nargs=2, default=None, metavar=("MIN", "MAX"),
                    help="longer side in px, uniform in [MIN, MAX] (default: 256 640 jpeg, 112 112 png)")  # fmt: skip
    ap.add_argument("--data", type=Path, default=None, help="default: benchmarks/data/speed[-KIND-MIN-MAX-N]")
    ap.add_argument("--baseline", default=None, help="also time this git revision's audit, alternating")
    ap.add_argument("--current", default=None, help="time this git revision's audit instead of the working tree's")
    ap.add_argument("--skip-rescan", action="store_true")
    ap.add_argument("--embed-rescan-repeats", type=int, default=1,
                    help="first/second default scans (with embeddings) of a train/val copy; 0 skips")  # fmt: skip
    args = ap.parse_args()
    if not BENCH_PY.exists():
        sys.exit(f"{BENCH_PY} missing: python3 -m venv .venv-bench && .venv-bench/bin/pip install cleanvision")

    sides = tuple(args.sides or ((256, 640) if args.kind == "jpeg" else (112, 112)))
    args.data = args.data or data_folder(args.kind, sides, args.n_images)
    t0 = time.perf_counter()
    files = make_images(args.data, args.n_images, args.seed, args.kind, sides)
    mpx = sum(Image.open(f).size[0] * Image.open(f).size[1] for f in files) / 1e6
    mb = sum(f.stat().st_size for f in files) / 1e6
    print(f"data: {len(files)} {args.kind.upper()}s in {args.data} ({mb:.1f} MB, {mpx:.1f} Mpx), "
          f"ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)  # fmt: skip
    n = len(files)

    audit_t, base_t, cv_t, cv_init, cv_call = [], [], [], [], []
    flagged = 0
    with tempfile.TemporaryDirectory(prefix="bench-speed-") as tmpname:
        tmp = Path(tmpname)
        with baseline_tree(args.baseline, tmp, args.data, args.workers) as base, \
                baseline_tree(args.current, tmp, args.data, args.workers, "current") as cur:  # fmt: skip
            run_audit(args.data, args.workers, tmp, cur)  # this tree's kernels compiled (and cached) before timing
            for rep in range(args.repeats):
                if base is not None:
                    base_t.append(run_audit(args.data, args.workers, tmp, base))
                audit_t.append(run_audit(args.data, args.workers, tmp, cur))
                wall, init, call, flagged = run_cleanvision(args.data, args.workers)
                cv_t.append(wall), cv_init.append(init), cv_call.append(call)
                print(f"repeat {rep + 1}: audit {audit_t[-1]:.2f} s, cleanvision {wall:.2f} s "
                      f"(find_issues {call:.2f} s)" + (f", baseline {base_t[-1]:.2f} s" if base_t else ""),
                      file=sys.stderr)  # fmt: skip
        rescans = []
        if not args.skip_rescan:
            for rep in range(args.repeats):
                rescans.append(run_rescan(args.data, tmp))
                print(f"rescan {rep + 1}: first {rescans[-1][0]:.2f} s, second {rescans[-1][1]:.2f} s, "
                      f"other rules {rescans[-1][2]:.2f} s", file=sys.stderr)  # fmt: skip
        embed_rescans = []
        if args.embed_rescan_repeats:
            split = split_copy(files, tmp)
            for rep in range(args.embed_rescan_repeats):
                embed_rescans.append(run_rescan(split, tmp, embed=True))
                print(f"default-scan rescan {rep + 1}: first {embed_rescans[-1][0]:.2f} s, "
                      f"second {embed_rescans[-1][1]:.2f} s, other rules {embed_rescans[-1][2]:.2f} s",
                      file=sys.stderr)  # fmt: skip

    med = statistics.median
    a, c, cc = med(audit_t), med(cv_t), med(cv_call)
    fmt = lambda ts: ", ".join(f"{t:.2f}" for t in ts)  # noqa: E731
    print(f"\n### Scan speed, {n} {args.kind.upper()}s, longer side {sides[0]}-{sides[1]} px ({mpx:.0f} Mpx), "
          f"{args.workers} workers each, "
          f"median of {args.repeats} alternating runs\n")  # fmt: skip
    print("| tool | wall (s), median | runs (s) | images/s |")
    print("|---|---|---|---|")
    at = f" at {args.current}" if args.current else ""
    print(f"| audit{at} scan --no-embed --no-cache -j {args.workers} | {a:.2f} | {fmt(audit_t)} | {n / a:.1f} |")
    print(f"| CleanVision find_issues(n_jobs={args.workers}), whole process | {c:.2f} | {fmt(cv_t)} | {n / c:.1f} |")
    print(f"| CleanVision find_issues only (in-call) | {cc:.2f} | {fmt(cv_call)} | {n / cc:.1f} |")
    if base_t:
        b = med(base_t)
        print(f"| audit at {args.baseline} (baseline) | {b:.2f} | {fmt(base_t)} | {n / b:.1f} |")
    print(f"\n**audit / CleanVision images/s: {c / a:.2f}x** (whole process; {cc / a:.2f}x against "
          f"CleanVision's in-call time). CleanVision import+init median {med(cv_init):.2f} s; "
          f"it flagged {flagged} issue instances.")  # fmt: skip
    if base_t:
        print(f"Baseline {args.baseline} / CleanVision: {c / med(base_t):.2f}x; this tree is {med(base_t) / a:.2f}x "
              "faster than the baseline.")  # fmt: skip
    if rescans:
        f, s = med(r[0] for r in rescans), med(r[1] for r in rescans)
        print(f"\n### audit rescan (default workers, fresh --cache-dir per repeat), median of {args.repeats}\n")
        print("| scan | wall (s), median | runs (s) | images/s |")
        print("|---|---|---|---|")
        print(f"| first (empty cache) | {f:.2f} | {fmt(r[0] for r in rescans)} | {n / f:.1f} |")
        print(f"| second (unchanged data) | {s:.2f} | {fmt(r[1] for r in rescans)} | {n / s:.1f} |")
        o = med(r[2] for r in rescans)
        print(f"| third (other rules: measurements cached) | {o:.2f} | {fmt(r[2] for r in rescans)} | {n / o:.1f} |")
        print(f"\n**rescan speed-up (first / second): {f / s:.1f}x**; with other rules (first / third): {f / o:.1f}x")
    if embed_rescans:
        f, s = med(r[0] for r in embed_rescans), med(r[1] for r in embed_rescans)
        print(f"\n### audit scan with embeddings (the default), train/val copy of the same images, "
              f"median of {len(embed_rescans)}\n")  # fmt: skip
        print("| scan | wall (s), median | runs (s) | images/s |")
        print("|---|---|---|---|")
        print(f"| first (empty cache) | {f:.2f} | {fmt(r[0] for r in embed_rescans)} | {n / f:.1f} |")
        print(f"| second (unchanged data) | {s:.2f} | {fmt(r[1] for r in embed_rescans)} | {n / s:.1f} |")
        o = med(r[2] for r in embed_rescans)
        print(f"| third (other rules: measurements and embeddings cached) | {o:.2f} | "
              f"{fmt(r[2] for r in embed_rescans)} | {n / o:.1f} |")  # fmt: skip
        print(f"\n**rescan speed-up, default scan (first / second): {f / s:.1f}x**; with other rules "
              f"(first / third): {f / o:.1f}x")  # fmt: skip
    print("\n### Machine\n")
    print(machine())


if __name__ == "__main__":
    main()
