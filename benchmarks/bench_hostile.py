"""Hostile-input scale: ``audit scan --no-embed`` on the three big inputs of the hardening
issue, each built in a temporary folder, each scanned in a fresh subprocess, wall time and
peak RSS (the largest single process: the scan or one of its workers) measured.

    /work/main/.venv/bin/python benchmarks/bench_hostile.py                 # all three cases
    /work/main/.venv/bin/python benchmarks/bench_hostile.py --cases yolo --timeout 300

Cases (what each input is, honestly):

* ``manifest``: a 1,000,000-row manifest CSV (``path,label,split``, 10 classes, 80/20
  train/val), rows spread over 1,000 folders that exist. ``--present`` rows (default 1,000,
  one a folder) name real 64 px PNG files; every other row names a file missing from its
  folder, so the scan decodes ``--present`` files and reports the rest as ``corrupt``
  (missing). Decoding a million real
  files is a different benchmark (``bench_speed.py``); this one measures what a million rows
  cost: discovery, the per-image table, the findings and the report.
* ``coco``: one ``instances_train.json`` of about 50 MB: 20,000 images (160 x 120, 80
  categories), about 152,000 boxes (1..14 per image, each with a 16-point polygon
  segmentation, 1% of them duplicated). ``--coco-present`` images (default 5,000) are on
  disk; the rest are missing (``box_missing_image``).
* ``yolo``: one 640 x 480 image whose label file holds 1,000,000 random boxes (sides 1% to
  10% of the image, inside it; 80 classes named in ``data.yaml``).

Discovery alone (``auditor.io.dataset.discover`` in its own subprocess) is timed for the
manifest case as well. Nothing is cached between runs (a fresh ``AUDITOR_CACHE_DIR``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DISCOVER_CHILD = """
import sys, time
from auditor.io.dataset import discover
t0 = time.perf_counter()
d = discover(sys.argv[1], manifest=sys.argv[2])
print(f"{len(d.items)} rows, {len(d.missing)} missing, {time.perf_counter() - t0:.1f} s")
"""


def run_measured(cmd: list[str], env: dict, timeout: float, cwd: Path) -> dict:
    """Run ``cmd``; return exit code, wall seconds, peak RSS (MiB, of the largest single
    process among it and its waited-for children, from ``wait4``) and the last stderr line.
    A command that runs past ``timeout`` seconds is killed (exit code None)."""
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        t0 = time.perf_counter()
        # cwd: not the checkout, so that `-m auditor.cli.app` imports the auditor that PYTHONPATH
        # (or the installed package) names: the benchmark can time another version
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True, cwd=cwd)
        rc, usage = None, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                rc = os.waitstatus_to_exitcode(status)
                break
            if time.perf_counter() - t0 > timeout:
                os.killpg(proc.pid, signal.SIGKILL)
                _, _, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        proc.returncode = rc if rc is not None else -9  # already reaped: keep Popen from waiting again
        err.seek(0)
        out.seek(0)
        lines = [ln for ln in err.read().decode(errors="replace").splitlines() if ln.strip()]
        stdout = out.read().decode(errors="replace").strip()
    return {"rc": rc, "wall_s": wall, "rss_mib": usage.ru_maxrss / 1024, "stderr": lines[-1] if lines else "",
            "stdout": stdout.splitlines()[-1] if stdout else ""}  # fmt: skip


def _tiny_images(folder: Path, names: list[str], side: tuple[int, int], seed: int) -> None:
    """Small real-photo crops (``side`` = width, height), one per name (relative to
    ``folder``; PNG or JPEG by its extension)."""
    from auditor.demo import synth

    rng = np.random.default_rng(seed)
    photo = np.tile(synth.load_photo("astronaut"), (2, 2, 1))  # 1024 px: room for a 640 x 480 crop
    w, h = side
    for name in names:
        y, x = rng.integers(0, photo.shape[0] - h), rng.integers(0, photo.shape[1] - w)
        crop = photo[y : y + h, x : x + w]
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synth.png_bytes(crop) if name.endswith(".png") else synth.jpeg_bytes(crop, 90))


def build_manifest(root: Path, rows: int, present: int) -> Path:
    """Row ``i`` names ``imgs/<i // 1000>/<i>.png``. ``present`` rows, spread one a folder
    over the folders, name real files; the others name files missing from folders that do
    exist (deleted files, the common case), so every row costs discovery a file lookup."""
    folders = max(1, rows // 1000)
    real = [(k % folders) * 1000 + k // folders for k in range(present)]
    _tiny_images(root / "imgs", [f"{i // 1000:04d}/{i:07d}.png" for i in real], (64, 64), seed=1)
    for k in range(folders):
        (root / "imgs" / f"{k:04d}").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 10, rows)
    val = rng.random(rows) < 0.2
    manifest = root / "manifest.csv"
    with open(manifest, "w", encoding="utf-8") as fh:
        fh.write("path,label,split\n")
        for i in range(rows):
            fh.write(f"imgs/{i // 1000:04d}/{i:07d}.png,class_{labels[i]},{'val' if val[i] else 'train'}\n")
    return manifest


def build_coco(root: Path, images: int, present: int) -> Path:
    _tiny_images(root / "images", [f"{i:06d}.jpg" for i in range(present)], (160, 120), seed=3)
    rng = np.random.default_rng(4)
    anns, image_entries = [], []
    for i in range(images):
        image_entries.append({"id": i, "file_name": f"{i:06d}.jpg", "width": 160, "height": 120})
        for _ in range(int(rng.integers(1, 15))):
            w, h = rng.uniform(8, 60), rng.uniform(8, 50)
            x, y = rng.uniform(0, 160 - w), rng.uniform(0, 120 - h)
            t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            poly = np.stack([x + w / 2 * (1 + np.cos(t)), y + h / 2 * (1 + np.sin(t))], axis=1).round(2)
            ann = {"id": len(anns), "image_id": i, "category_id": int(rng.integers(1, 81)),
                   "bbox": [round(x, 2), round(y, 2), round(w, 2), round(h, 2)], "area": round(w * h, 2),
                   "iscrowd": 0, "segmentation": [poly.ravel().tolist()]}  # fmt: skip
            anns.append(ann)
            if rng.random() < 0.01:  # annotated twice
                anns.append({**ann, "id": len(anns)})
    cats = [{"id": k, "name": f"class_{k}", "supercategory": "thing"} for k in range(1, 81)]
    path = root / "annotations" / "instances_train.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": image_entries, "annotations": anns, "categories": cats}))
    return path


def build_yolo(root: Path, boxes: int) -> None:
    _tiny_images(root / "images" / "train", ["x.jpg"], (640, 480), seed=5)
    rng = np.random.default_rng(6)
    w, h = rng.uniform(0.01, 0.1, boxes), rng.uniform(0.01, 0.1, boxes)
    cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
    cls = rng.integers(0, 80, boxes)
    (root / "labels" / "train").mkdir(parents=True)
    with open(root / "labels" / "train" / "x.txt", "w") as fh:
        for row in zip(cls, cx, cy, w, h, strict=True):
            fh.write("{} {:.6f} {:.6f} {:.6f} {:.6f}\n".format(*row))
    (root / "data.yaml").write_text("names: [" + ", ".join(f"class_{k}" for k in range(80)) + "]\n")


COUNT_CHILD = """
import collections, json, sys
print(json.dumps(collections.Counter(f["check"] for f in json.load(open(sys.argv[1]))["findings"])))
"""


def build(case: str, root: Path, args: argparse.Namespace) -> str:
    """Build one case under ``root``; what it is, in words."""
    if case == "manifest":
        build_manifest(root, args.rows, args.present)
        return f"{args.rows:,} rows, {args.present:,} real files, the rest missing"
    if case == "coco":
        path = build_coco(root, args.coco_images, args.coco_present)
        return f"{path.stat().st_size / 1e6:.0f} MB JSON, {args.coco_images:,} images ({args.coco_present:,} on disk)"
    build_yolo(root, args.boxes)
    return f"1 image, {args.boxes:,} boxes"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["manifest", "coco", "yolo"], choices=["manifest", "coco", "yolo"])
    ap.add_argument("--rows", type=int, default=1_000_000, help="manifest rows")
    ap.add_argument("--present", type=int, default=1_000, help="manifest rows naming a real file")
    ap.add_argument("--coco-images", type=int, default=20_000)
    ap.add_argument("--coco-present", type=int, default=5_000)
    ap.add_argument("--boxes", type=int, default=1_000_000, help="boxes in the YOLO label file")
    ap.add_argument("--timeout", type=float, default=600, help="seconds before a scan is killed")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--build", nargs=2, metavar=("CASE", "ROOT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.build:  # a child: build one case and say what it is
        print(build(args.build[0], Path(args.build[1]), args))
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_hostile_") as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "AUDITOR_CACHE_DIR": str(tmp / "cache")}
        for case in args.cases:
            root = tmp / case
            root.mkdir()
            t0 = time.perf_counter()
            # Built (and, below, the report read) in child processes: a process forked from
            # this one starts with this one's resident memory in its peak RSS, so this one
            # must stay small for the scan's peak to be the scan's.
            what = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--build", case, str(root)], check=True,
                                  capture_output=True, text=True).stdout.strip()  # fmt: skip
            print(f"{case}: built in {time.perf_counter() - t0:.0f} s ({what})", flush=True)
            extra = ["--manifest", str(root / "manifest.csv")] if case == "manifest" else []
            if case == "manifest":
                d = run_measured([sys.executable, "-c", DISCOVER_CHILD, str(root), str(root / "manifest.csv")], env,
                                 args.timeout, tmp)  # fmt: skip
                rows.append((f"{case} (discover only)", what, d))
                print(f"  discover: {d['wall_s']:.1f} s, {d['rss_mib']:.0f} MiB, {d['stdout'] or d['stderr']}",
                      flush=True)  # fmt: skip
            cmd = [sys.executable, "-m", "auditor.cli.app", "scan", str(root), "--no-embed",
                   "--out", str(tmp / f"out_{case}"), "--workers", str(args.workers), *extra]  # fmt: skip
            r = run_measured(cmd, env, args.timeout, tmp)
            rows.append((case, what, r))
            print(f"  scan: rc {r['rc']}, {r['wall_s']:.1f} s, {r['rss_mib']:.0f} MiB {r['stderr'][:200]}", flush=True)
            report = tmp / f"out_{case}" / "report.json"
            if report.exists():
                counts = subprocess.run([sys.executable, "-c", COUNT_CHILD, str(report)], capture_output=True,
                                        text=True).stdout.strip()  # fmt: skip
                print(f"  findings: {counts}", flush=True)
    print("\n| case | input | exit | wall (s) | peak RSS (MiB) |\n|---|---|---|---|---|")
    for case, what, r in rows:
        rc = "killed" if r["rc"] is None else r["rc"]
        print(f"| {case} | {what} | {rc} | {r['wall_s']:.1f} | {r['rss_mib']:.0f} |")


if __name__ == "__main__":
    main()
