"""Hostile inputs: files that are not regular files, huge files, huge or deeply nested
annotation files, million-row manifests. Each must end in a finding (exit 0/1) or an input
error naming the file (exit 2, one line on stderr, no traceback), quickly, and leave the
dataset as it was.

Anything that could hang runs in a subprocess with a timeout, or next to a watchdog that
unblocks (and records) any open of a FIFO, so a regression fails the test instead of hanging
the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import measured_mixed_files, tree_digest

from auditor.checks.boxes import _box, box_duplicate, box_label_conflict, valid_boxes
from auditor.core.context import CheckContext
from auditor.core.findings import Finding
from auditor.demo import synth
from auditor.io.annotations import iou_matrix
from auditor.io.dataset import DatasetError, discover
from auditor.io.decode import DEFAULT_MAX_FILE_BYTES, decode_file, open_regular, read_bytes
from auditor.policy.rules import load_rules

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs")
OVERLAP_RULES = load_rules().checks["box_duplicate"].params


def _png(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    return synth.write(path, synth.png_bytes((rng.random((40, 40, 3)) * 255).astype(np.uint8)))


def _audit(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """``audit ARGS`` in a fresh interpreter; a hang fails the test after ``timeout`` s."""
    return subprocess.run([sys.executable, "-m", "auditor.cli", *args], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _one_line_error(r: subprocess.CompletedProcess, *names: str) -> None:
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for name in names:
        assert name in lines[0]


class FifoWatch:
    """FIFOs that must never be opened. A thread keeps trying to open each for writing
    without blocking: that succeeds only while something holds it open for reading, so a
    reader is both recorded (``opened``) and released (it reads end-of-file), never hung."""

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.opened: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def make(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(path)
        self.paths.append(path)
        return path

    def _run(self) -> None:
        while not self._stop.is_set():
            for p in list(self.paths):
                try:
                    fd = os.open(p, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:  # ENXIO: no reader (the good case); or the file is gone
                    continue
                self.opened.add(p.name)
                os.close(fd)
            time.sleep(0.01)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def fifos():
    watch = FifoWatch()
    yield watch
    watch.close()
    assert not watch.opened, f"FIFOs opened: {sorted(watch.opened)}"


# --- 1. FIFOs, sockets, devices -------------------------------------------------------------


def test_decoder_refuses_what_is_not_a_regular_file_without_opening_it(tmp_path, fifos):
    fifo = fifos.make(tmp_path / "pipe.png")
    for path in (fifo, "/dev/zero", tmp_path):
        res, raw = decode_file(str(path))
        assert raw is None and res.kind == "unreadable"
        assert "not a regular file" in res.message
    assert "FIFO" in read_bytes(str(fifo)).message and "character device" in read_bytes("/dev/zero").message
    with pytest.raises(OSError, match="not a regular file"):
        open_regular(fifo)


@pytest.mark.parametrize("names", [["cat/b.png"], ["cat/b"], ["cat/b.png", "cat/c", "dog/d.jpg"]])
def test_fifo_in_a_dataset_is_skipped_and_counted_never_opened(tmp_path, fifos, names):
    _png(tmp_path / "cat" / "a.png")
    for name in names:
        fifos.make(tmp_path / name)
    d = discover(tmp_path)
    assert list(d.items.path) == ["cat/a.png"]
    assert d.skipped["not_regular_file"] == len(names)


def test_fifo_as_the_only_file_is_an_input_error(tmp_path, fifos):
    fifos.make(tmp_path / "b.png")
    with pytest.raises(DatasetError, match="no images found .*1 not_regular_file"):
        discover(tmp_path)


@pytest.mark.parametrize("command", ["scan", "gate", "embed"])
def test_cli_commands_do_not_hang_on_a_fifo(tmp_path, command):
    only = tmp_path / "only"
    only.mkdir()
    os.mkfifo(only / "b.png")
    out = ["--out", str(tmp_path / "out.npz")] if command == "embed" else ["--out", str(tmp_path / "r"), "--no-embed"]
    _one_line_error(_audit(command, str(only), *out), "no images found", "not_regular_file")
    if command == "embed":
        return
    mixed = tmp_path / "mixed"
    for i in range(3):
        _png(mixed / "cat" / f"{i}.png", i)
    os.mkfifo(mixed / "cat" / "b.png")
    os.mkfifo(mixed / "cat" / "noext")
    before = tree_digest(mixed)
    r = _audit(command, str(mixed), "--out", str(tmp_path / "r2"), "--no-embed")
    assert r.returncode in (0, 1), r.stderr
    report = json.loads((tmp_path / "r2" / "report.json").read_text())
    assert report["dataset"]["skipped"]["not_regular_file"] == 2
    assert tree_digest(mixed) == before


def _yolo(root: Path) -> None:
    _png(root / "images" / "train" / "x.png")
    (root / "labels" / "train").mkdir(parents=True)


@pytest.mark.parametrize("where", ["labels/train/x.txt", "labels/train/orphan.txt", "data.yaml", "classes.txt"])
def test_fifo_as_a_yolo_annotation_file_is_an_input_error(tmp_path, fifos, where):
    _yolo(tmp_path)
    if where != "labels/train/x.txt":
        (tmp_path / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    fifos.make(tmp_path / where)
    with pytest.raises(DatasetError, match=rf"{Path(where).name}.*FIFO"):
        discover(tmp_path)


def test_fifo_as_a_coco_file_or_manifest_is_an_input_error(tmp_path, fifos):
    _png(tmp_path / "images" / "a.png")
    coco = fifos.make(tmp_path / "annotations" / "instances_train.json")
    with pytest.raises(DatasetError, match="instances_train.json is a FIFO"):
        discover(tmp_path)
    with pytest.raises(DatasetError, match="instances_train.json is a FIFO"):
        discover(tmp_path, coco=coco)
    manifest = fifos.make(tmp_path / "m.csv")
    with pytest.raises(DatasetError, match="m.csv.*FIFO"):
        discover(tmp_path, manifest=manifest)


def test_cli_fifo_annotation_file_is_one_line_exit_2(tmp_path):
    root = tmp_path / "ds"
    _yolo(root)
    os.mkfifo(root / "labels" / "train" / "x.txt")
    _one_line_error(_audit("scan", str(root), "--no-embed", "--out", str(tmp_path / "r")), "x.txt", "FIFO")


def test_manifest_row_naming_a_fifo_is_a_corrupt_finding(tmp_path, fifos):
    from auditor.pipeline.api import scan

    root = tmp_path / "ds"
    for i in range(3):
        _png(root / f"{i}.png", i)
    fifos.make(root / "pipe.png")
    (root / "m.csv").write_text("path,label\n0.png,a\n1.png,a\n2.png,b\npipe.png,b\n")
    result = scan(root, tmp_path / "r", embed=False, manifest=root / "m.csv", cache_dir=tmp_path / "c")
    corrupt = [f for f in result.findings if f.check == "corrupt"]
    assert [f.paths for f in corrupt] == [["pipe.png"]]
    assert "FIFO" in corrupt[0].message


# --- 2. million-row manifests ---------------------------------------------------------------


def test_manifest_discovery_resolves_folders_not_rows(tmp_path, monkeypatch):
    """A path resolve (and a root resolve) per row made a 1,000,000-row manifest take
    173 s to discover: each folder is resolved once now, each file at most lstat'ed."""
    for k in range(3):
        _png(tmp_path / "imgs" / f"{k}" / "real.png", k)
    rows = [f"imgs/{i % 3}/{i}.png" for i in range(3000)] + [f"imgs/{k}/real.png" for k in range(3)]
    (tmp_path / "m.csv").write_text("path,label\n" + "".join(f"{p},c{i % 2}\n" for i, p in enumerate(rows)))
    calls = {"resolve": 0}
    real_realpath, real_resolve = os.path.realpath, Path.resolve

    def counting_realpath(*a, **k):
        calls["resolve"] += 1
        return real_realpath(*a, **k)

    def counting_resolve(self, *a, **k):
        calls["resolve"] += 1
        return real_resolve(self, *a, **k)

    monkeypatch.setattr(os.path, "realpath", counting_realpath)
    monkeypatch.setattr(Path, "resolve", counting_resolve)
    d = discover(tmp_path, manifest=tmp_path / "m.csv")
    assert len(d.items) == 3003 and len(d.missing) == 3000
    assert sorted(set(d.items.path) - set(d.missing)) == [f"imgs/{k}/real.png" for k in range(3)]
    assert calls["resolve"] <= 10  # the root and the 3 folders, not 3003 rows (speed: benchmarks/bench_hostile.py)


@pytest.mark.parametrize("follow", [False, True])
def test_manifest_symlinks_are_still_checked_per_folder_and_file(tmp_path, follow):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    _png(root / "in" / "a.png", 0)
    _png(outside / "b.png", 1)
    os.symlink(outside, root / "out_dir")  # a folder leading out
    os.symlink(root / "in", root / "in_dir")  # a folder staying in
    os.symlink(root / "in" / "a.png", outside / "back.png")  # out through a folder, back in by the file
    os.symlink(root / "nowhere.png", root / "in" / "dangling.png")
    m = tmp_path / "m.csv"
    m.write_text("path,label\nin_dir/a.png,x\nout_dir/back.png,x\nin/dangling.png,x\n")
    d = discover(root, manifest=m, follow_symlinks=follow)
    assert d.missing == ["in/dangling.png"]
    m.write_text("path,label\nin_dir/a.png,x\nout_dir/b.png,x\n")
    if follow:
        assert discover(root, manifest=m, follow_symlinks=True).missing == []
    else:
        with pytest.raises(DatasetError, match="line 3: path 'out_dir/b.png' resolves outside"):
            discover(root, manifest=m)


def test_manifest_path_rules_on_strings(tmp_path):
    _png(tmp_path / "a" / "b.png")
    m = tmp_path / "m.csv"
    m.write_text('path,label\n"a\\b.png",x\n./a//./b2.png,x\n')
    d = discover(tmp_path, manifest=m)
    assert list(d.items.path) == ["a/b.png", "a/b2.png"] and d.missing == ["a/b2.png"]
    assert list(d.items.ext) == [".png", ".png"]
    assert d.items.abs_path[0] == str((tmp_path / "a" / "b.png").absolute())
    for bad, why in [(".", "invalid path"), ("x" * 500 + "/../y", "escapes"), ("a/\x00b.png", "invalid path")]:
        m.write_text(f"path,label\na/b.png,x\n{bad},x\n")
        with pytest.raises(DatasetError, match=why) as exc:
            discover(tmp_path, manifest=m)
        assert "line 3" in str(exc.value) and len(str(exc.value)) < 200


def test_manifest_path_string_rules_equal_purepath_rules():
    """The string-only checks accept, normalise and refuse exactly what the
    PurePosixPath-based ones did (every path of up to 4 of these pieces)."""
    from itertools import product
    from pathlib import PurePosixPath

    from auditor.io.dataset import manifest_path

    def by_purepath(rel: str) -> str:
        pure = PurePosixPath(rel.replace("\\", "/"))
        if not rel or rel.strip() != rel or not pure.parts:
            return "invalid"
        if pure.is_absolute() or ":" in pure.parts[0] or ".." in pure.parts:
            return "escapes"
        return pure.as_posix()

    def by_strings(rel: str) -> str:
        try:
            return manifest_path(rel)
        except DatasetError as exc:
            return "invalid" if "invalid" in str(exc) else "escapes"

    for n in range(1, 5):
        for pieces in product(["a", ".", "/", "\\", ":", "..", "b.c", " ", ".x"], repeat=n):
            rel = "".join(pieces)
            assert by_strings(rel) == by_purepath(rel), rel


def _rowwise_table(disc, measured: dict) -> pd.DataFrame:
    """The per-image table as build_table made it before it was built by columns (one dict
    per item): the reference for its columns, their order, dtypes and values."""
    from auditor.pipeline.api import HASH_COLUMNS, MEASURED_COLUMNS

    rows, missing = [], set(disc.missing)
    for item in disc.items.to_dict("records"):
        if item["path"] in missing:
            chash, props = None, {"error_kind": "missing", "error": "no such file"}
        else:
            chash, props = measured[item["abs_path"]]
        rows.append({**item, "content_hash": chash, **props})
    exact = {c: [r.pop(c, None) for r in rows] for c in HASH_COLUMNS}
    table = pd.DataFrame(rows)
    for col, values in exact.items():
        table[col] = pd.Series(values, index=table.index, dtype=object)
    for col in ("error_kind", "error", "format", "pixel_hash", "mode"):
        if col not in table:
            table[col] = None
    for col in MEASURED_COLUMNS:
        if col not in table:
            table[col] = np.nan
    table["ok"] = table["error_kind"].isna()
    return table


def test_table_by_columns_equals_the_row_by_row_table(tmp_path):
    """build_table builds a manifest's missing rows by columns; every mix of decoded,
    undecodable and missing rows gives the table one dict per row gave (dtypes, column order
    and the 64-bit hashes as Python ints included)."""
    import itertools

    from auditor.pipeline.api import HASH_COLUMNS, build_table

    names, measured = measured_mixed_files(tmp_path)
    for k, n_missing, start in itertools.product((0, 1, 3, len(names)), (0, 1, 3), (0, 1)):
        if not k and not n_missing:
            continue
        entries = names[start : start + k] + [f"gone{j}.png" for j in range(n_missing)]
        entries = entries[1::2] + entries[::2]  # missing rows first, last and between
        items = pd.DataFrame({"path": entries, "abs_path": [str(tmp_path / e) for e in entries],
                              "split": [("train", None)[i % 2] for i in range(len(entries))],
                              "label": ["a"] * len(entries), "ext": [Path(e).suffix for e in entries]})  # fmt: skip
        gone = [e for e in entries if e.startswith("gone")]
        disc = SimpleNamespace(items=items, missing=gone, missing_mask=lambda items=items, gone=gone: items["path"]
                               .isin(gone).to_numpy())  # fmt: skip
        got, want = build_table(disc, measured), _rowwise_table(disc, measured)
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        for col in HASH_COLUMNS:
            assert [type(v) for v in got[col]] == [type(v) for v in want[col]]


def test_manifest_of_missing_files_costs_little_per_row(tmp_path):
    """100,000 manifest rows whose files are missing: one corrupt finding each, counted one
    by one by the gate and flagged in images.parquet; the table, findings and report cost a
    few hundred bytes a row (one dict per row, per-row details, the report's own copies and
    json.dumps' list of pieces cost over 2 kB), and report.json is written as json.dumps
    writes it. A 1,000,000-row manifest took 94 s and 4.7 GB (audit scan --no-embed)."""
    import tracemalloc

    from auditor.io.store import Store
    from auditor.measure.batch import measure_all
    from auditor.pipeline.api import build_table, present_paths, run_checks
    from auditor.policy.rules import load_rules
    from auditor.report.build import build_report
    from auditor.report.encode import image_table, report_json_view

    n = 100_000
    for k in range(3):
        _png(tmp_path / "imgs" / f"{k}" / "real.png", k)
    rows = [f"imgs/{i % 100}/{i}.png,c{i % 3},{'val' if i % 5 == 0 else 'train'}" for i in range(n)]
    rows += [f"imgs/{k}/real.png,c0,train" for k in range(3)]
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    rules = load_rules(None)
    disc = discover(tmp_path, manifest=tmp_path / "m.csv")
    with Store(None) as store:
        measured = measure_all(present_paths(disc), store, workers=1)
    tracemalloc.start()
    try:
        table = build_table(disc, measured)
        findings = run_checks(table, rules, only=["corrupt", "format_mismatch"])
        report = build_report(disc, table, findings, rules)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        text = report_json_view(report)  # what write_outputs writes: a view of one buffer
        json_peak = tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()
    result = SimpleNamespace(table=table, findings=findings, report=report)
    flags = image_table(result)
    corrupt = [f for f in findings if f.check == "corrupt"]
    assert len(corrupt) == n and all(len(f.paths) == 1 for f in corrupt)
    assert corrupt[7].paths == ["imgs/7/7.png"] and corrupt[7].details == {"reason": "missing", "error": "no such file"}
    assert corrupt[7].message == "imgs/7/7.png: file listed in the manifest does not exist (no such file)"
    gate = {e["rule"]: e for e in report["gate"]["rules"]}["corrupt"]
    assert gate["value"] == n and gate["fraction"] == round(n / (n + 3), 6)
    assert report["checks"]["corrupt"]["findings"] == n
    assert report["findings"][7] == corrupt[7].to_dict()
    assert int(flags["is_corrupt"].sum()) == n and not flags["is_corrupt"].iloc[-3:].any()
    assert bytes(text) == (json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode()
    assert held / n < 900, f"{held / n:.0f} bytes a row"
    assert json_peak < 1.5 * len(text), f"writing report.json took {json_peak / len(text):.1f}x its size"


def test_report_json_is_what_json_dumps_writes():
    """report.json is written a finding at a time by a writer of its own; byte for byte
    what json.dumps(indent=2, ensure_ascii=False, allow_nan=False) writes, errors included."""
    import random

    from auditor.report.encode import report_json_bytes

    rnd = random.Random(0)
    scalars = [None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e-7, 1e16, "", 'a\nb"c\\', "ünï ✓ \u2028 \x00"]

    def value(depth: int = 0):
        r = rnd.random()
        if depth > 3 or r < 0.4:
            return rnd.choice(scalars)
        if r < 0.6:
            return [value(depth + 1) for _ in range(rnd.randint(0, 3))]
        if r < 0.65:
            return tuple(value(depth + 1) for _ in range(rnd.randint(0, 3)))
        if r < 0.95:
            return {f"k{i}": value(depth + 1) for i in range(rnd.randint(0, 3))}
        return {rnd.choice([1, 2.5, True, None]): value(depth + 1)}  # keys json turns into strings

    for i in range(3000):
        doc = {f"s{j}": value(1) for j in range(rnd.randint(0, 5))} if i % 2 else value()
        want = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
        assert report_json_bytes(doc) == want.encode()
    for bad, error in [({"a": [float("nan")]}, ValueError), ({"f": [{"x": float("inf")}]}, ValueError),
                       ({"a": {1, 2}}, TypeError)]:  # fmt: skip
        with pytest.raises(error):
            report_json_bytes(bad)


def test_store_takes_a_result_in_chunks(tmp_path):
    """A scan's recorded outputs go into the store a chunk at a time (a bound INSERT value
    is copied twice by SQLite); chunks that do not add up to the size given store nothing."""
    from auditor.io.store import Store

    big = os.urandom(9_000_001)
    with Store(tmp_path / "s.sqlite3") as store:
        store.put_result("a", big)
        store.put_result("b", lambda: iter([b"ab", b"", memoryview(b"cde")]), size=5)
        store.put_result("c", b"")
        assert (store.get_result("a"), store.get_result("b"), store.get_result("c")) == (big, b"abcde", b"")
        for size in (4, 6):
            with pytest.raises(ValueError):
                store.put_result("d", lambda: iter([b"ab", b"cde"]), size=size)
        assert store.get_result("d") is None


# --- 3/4. big COCO files, images with very many boxes ---------------------------------------


def _old_overlapping(b: pd.DataFrame, min_iou: float, same_class: bool) -> list[Finding]:
    """The box overlap search as it was: an n x n IoU matrix per image (the reference)."""
    check = "box_duplicate" if same_class else "box_label_conflict"
    out = []
    valid = valid_boxes(b)
    valid = valid[~valid["crowd"].astype(bool)]
    for path, g in valid.groupby("path", sort=True):
        if len(g) < 2:
            continue
        corners = g[["x0", "y0", "x1", "y1"]].to_numpy(float)
        iou = np.triu(iou_matrix(corners, corners), k=1)
        cats = g["category"].astype(str).to_numpy()
        same = cats[:, None] == cats[None, :]
        hit = (iou >= min_iou) & (same if same_class else ~same)
        rows = list(g.itertuples())
        for i, j in zip(*np.nonzero(hit), strict=True):
            a, c = rows[i], rows[j]
            what = (f"{a.where} and {c.where}: two {a.category} boxes overlap (IoU {iou[i, j]:.2f})" if same_class
                    else f"{a.where} ({a.category}) and {c.where} ({c.category}): one object, two classes "
                         f"(IoU {iou[i, j]:.2f})")  # fmt: skip
            out.append(Finding(check, [path], float(iou[i, j]), what,
                               {"box_ids": [a.box_id, c.box_id], "where": [a.where, c.where],
                                "categories": [a.category, c.category], "iou": float(iou[i, j]),
                                "split": a.split, "boxes": [_box(a), _box(c)]}))  # fmt: skip
    return out


def _random_boxes(n_images: int, per_image: int, seed: int) -> pd.DataFrame:
    """Normalised boxes with clusters of near copies (so that some pairs overlap at every
    IoU), a few crowd and degenerate boxes, three classes, the rows of images interleaved."""
    rng = np.random.default_rng(seed)
    n = n_images * per_image
    x0, y0 = rng.uniform(-0.1, 0.9, n), rng.uniform(-0.1, 0.9, n)
    w, h = rng.uniform(0.0, 0.3, n), rng.uniform(0.0, 0.3, n)
    copy = rng.random(n) < 0.4  # a jittered copy of the box before it
    for k in np.flatnonzero(copy[1:]) + 1:
        x0[k], y0[k] = x0[k - 1] + rng.normal(0, 0.01), y0[k - 1] + rng.normal(0, 0.01)
        w[k], h[k] = w[k - 1] * rng.uniform(0.9, 1.1), h[k - 1] * rng.uniform(0.9, 1.1)
    exact = rng.random(n) < 0.05
    x0[1:][exact[1:]], y0[1:][exact[1:]] = x0[:-1][exact[1:]], y0[:-1][exact[1:]]
    w[1:][exact[1:]], h[1:][exact[1:]] = w[:-1][exact[1:]], h[:-1][exact[1:]]
    w[rng.random(n) < 0.02] = 0.0
    paths = np.repeat([f"img{i:03d}.jpg" for i in range(n_images)], per_image)
    b = pd.DataFrame({"box_id": [f"b{i}" for i in range(n)], "path": paths, "split": "train",
                         "category": rng.choice(["a", "b", "c"], n, p=[0.6, 0.3, 0.1]),
                         "w": w, "h": h, "x0": x0, "y0": y0, "x1": x0 + w, "y1": y0 + h,
                         "where": [f"f.txt:{i}" for i in range(n)], "crowd": rng.random(n) < 0.02})  # fmt: skip
    return b.sample(frac=1, random_state=seed).reset_index(drop=True)  # images interleaved


def _ctx_with_boxes(b: pd.DataFrame) -> CheckContext:
    ctx = CheckContext(table=pd.DataFrame({"path": []}))
    ctx.annotations = object()  # boxes_of reads the cache below
    ctx.analyses.boxes = b
    return ctx


@pytest.mark.parametrize("min_iou", [0.1, 0.3, 0.5, 0.9, 0.99, 1.0])
def test_box_overlap_sweep_matches_the_quadratic_search(min_iou):
    b = _random_boxes(n_images=40, per_image=60, seed=int(min_iou * 100))
    for check, same in ((box_duplicate, True), (box_label_conflict, False)):
        new = check(_ctx_with_boxes(b), {**OVERLAP_RULES, "min_iou": min_iou})
        old = _old_overlapping(b, min_iou, same)
        assert len(old) > 0 or min_iou >= 0.99
        assert [(f.check, f.paths, f.score, f.message, f.details) for f in new] == \
               [(f.check, f.paths, f.score, f.message, f.details) for f in old]  # fmt: skip


def test_box_overlap_is_linear_in_images():
    """The per-image pandas loop made a 20,000-image COCO file take minutes."""
    b = _random_boxes(n_images=5000, per_image=8, seed=3)
    t0 = time.perf_counter()
    found = box_duplicate(_ctx_with_boxes(b), OVERLAP_RULES)
    assert found and time.perf_counter() - t0 < 30.0  # quadratic: minutes; slack for a loaded machine


def test_image_with_too_many_boxes_is_one_finding_not_n_squared(tmp_path):
    """A label file with 1,000,000 boxes asked for a 1e6 x 1e6 IoU matrix (7.28 TiB)."""
    from auditor.pipeline.api import scan

    n = OVERLAP_RULES["max_boxes_per_image"] + 1
    root = tmp_path / "ds"
    _yolo(root)
    rng = np.random.default_rng(0)
    w, h = rng.uniform(0.01, 0.1, n), rng.uniform(0.01, 0.1, n)
    cx, cy = rng.uniform(w / 2, 1 - w / 2), rng.uniform(h / 2, 1 - h / 2)
    lines = [f"0 {a:.5f} {b:.5f} {c:.5f} {d:.5f}\n" for a, b, c, d in zip(cx, cy, w, h, strict=True)]
    (root / "labels" / "train" / "x.txt").write_text("".join(lines))
    _png(root / "images" / "train" / "y.png", 1)  # an ordinary image beside it, still compared
    (root / "labels" / "train" / "y.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    result = scan(root, tmp_path / "r", embed=False, cache_dir=tmp_path / "c")
    dup = [f for f in result.findings if f.check == "box_duplicate"]
    assert sorted(f.paths[0] for f in dup) == ["images/train/x.png", "images/train/y.png"]
    crowded = next(f for f in dup if f.paths == ["images/train/x.png"])
    assert crowded.details == {"box_count": n, "limit": OVERLAP_RULES["max_boxes_per_image"], "compared": False}
    assert "images/train/x.png" in result.report["checks"]["box_label_conflict"]["note"]


def test_sweep_handles_a_dense_image_below_the_bound():
    """10,000 boxes on one image: the IoU matrix needed about 6 GB of temporaries."""
    rng = np.random.default_rng(1)
    n = OVERLAP_RULES["max_boxes_per_image"] - 5
    x0, y0 = rng.uniform(0, 0.95, n), rng.uniform(0, 0.95, n)
    w, h = rng.uniform(0.01, 0.05, n), rng.uniform(0.01, 0.05, n)
    b = pd.DataFrame({"box_id": np.arange(n).astype(str), "path": "a.jpg", "split": None, "category": "a",
                      "w": w, "h": h, "x0": x0, "y0": y0, "x1": x0 + w, "y1": y0 + h, "where": "f",
                      "crowd": False})  # fmt: skip
    b = pd.concat([b, b.iloc[:5]], ignore_index=True)  # 5 exact duplicates
    t0 = time.perf_counter()
    found = box_duplicate(_ctx_with_boxes(b), OVERLAP_RULES)
    assert len(found) >= 5 and time.perf_counter() - t0 < 30.0  # the matrix: minutes and 6 GB


def test_coco_missing_images_resolved_in_one_pass(tmp_path):
    """Missing-image resolution compared every box's path once per missing image."""
    from auditor.io.annotations import Annotations, _resolve_problems

    n_images, per_image = 10_000, 10
    paths = [f"images/{i}.png" for i in range(n_images)]
    images = pd.DataFrame({"path": paths, "split": None, "width": 40.0, "height": 40.0, "exists": False,
                           "annotated": True, "background": False, "where": [f"f.json: images[{i}]" for i in
                                                                             range(n_images)]})  # fmt: skip
    boxes = pd.DataFrame({"path": np.repeat(paths, per_image), "category_id": "1"})
    ann = Annotations("coco", ["f.json"], boxes, images, {"1": "a"})
    t0 = time.perf_counter()
    _resolve_problems(ann)
    assert time.perf_counter() - t0 < 20.0  # once per missing image: minutes
    missing = [p for p in ann.problems if p["kind"] == "missing_image"]
    assert len(missing) == n_images and all(p["boxes"] == per_image for p in missing)
    assert (
        missing[7]["message"] == "images/7.png is annotated (10 boxes, f.json: images[7]) but the file does not exist"
    )


def test_coco_image_paths_resolved_per_folder_keep_their_guarantees(tmp_path):
    root, outside = tmp_path / "ds", tmp_path / "outside"
    _png(root / "images" / "a.png", 0)
    _png(outside / "b.png", 1)
    os.symlink(outside, root / "images" / "out")  # a folder leading out
    os.symlink(root / "images" / "a.png", root / "images" / "link.png")  # a file linking inside
    os.symlink(root / "images" / "a.png", outside / "back.png")  # out by the folder, back by the file
    os.symlink(root / "images" / "gone.png", root / "images" / "dangling.png")
    names = ["a.png", "link.png", "dangling.png", "nothere.png", "./a//x/../b.png"]
    doc = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)], "annotations": [],
           "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    coco = root / "instances_train.json"
    coco.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match=r"images\[4\].file_name: .\./a//x/\.\./b\.png. escapes"):
        discover(root, coco=coco)
    doc["images"].pop()
    coco.write_text(json.dumps(doc))
    images = discover(root, coco=coco, images=root / "images").annotations.images
    assert dict(zip(images.path, images.exists, strict=True)) == {
        "images/a.png": True,
        "images/link.png": True,
        "images/dangling.png": False,
        "images/nothere.png": False,
    }
    for name in ("out/b.png", "out/back.png"):
        doc["images"] = [{"id": 1, "file_name": name}]
        coco.write_text(json.dumps(doc))
        with pytest.raises(DatasetError, match="escapes the dataset root"):
            discover(root, coco=coco, images=root / "images")


# --- 5. deeply nested and self-expanding annotation files -----------------------------------


def test_deeply_nested_coco_json_is_one_line_exit_2(tmp_path):
    root = tmp_path / "ds"
    _png(root / "images" / "a.png")
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_train.json").write_text("[" * 100_000 + "]" * 100_000)
    _one_line_error(_audit("scan", str(root), "--no-embed", "--out", str(tmp_path / "r")),
                    "instances_train.json", "nested")  # fmt: skip


def test_nested_or_huge_coco_values_are_quoted_in_part(tmp_path):
    _png(tmp_path / "images" / "a.png")
    deep: list = []
    for _ in range(600):  # parses (under the JSON reader's depth limit), but json.dumps of it may not
        deep = [deep]
    cases = [{"categories": [{"id": 1, "name": "a", "x": 1}, deep]}, {"categories": [{"id": deep, "name": "a"}]},
             {"images": [{"id": 1, "file_name": "../" + "x" * 1_000_000}]},
             {"annotations": [{"image_id": deep, "category_id": 1, "bbox": [1, 1, 2, 2]}]}]  # fmt: skip
    for case in cases:
        data = {"images": [{"id": 1, "file_name": "a.png"}], "annotations": [], "categories": [], **case}
        path = tmp_path / "instances_x.json"
        path.write_text(json.dumps(data))
        with pytest.raises(DatasetError) as exc:
            discover(tmp_path, coco=path)
        assert "instances_x.json" in str(exc.value) and len(str(exc.value)) < 400


def test_deeply_nested_data_yaml_is_an_input_error(tmp_path):
    _yolo(tmp_path)
    (tmp_path / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (tmp_path / "data.yaml").write_text("names: " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DatasetError, match="data.yaml"):
        discover(tmp_path)
    (tmp_path / "data.yaml").write_text("names: [[[[a]]]]\n")
    with pytest.raises(DatasetError, match=r"data.yaml: names\[0\]: expected a class name"):
        discover(tmp_path)


def test_billion_laughs_data_yaml_is_refused_not_expanded(tmp_path):
    root = tmp_path / "ds"
    _yolo(root)
    (root / "labels" / "train" / "x.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for k in "bcdefghi":
        prev = chr(ord(k) - 1)
        lines.append(f"{k}: &{k} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]")
    lines.append("names: *i")
    (root / "data.yaml").write_text("\n".join(lines) + "\n")
    _one_line_error(_audit("scan", str(root), "--no-embed", "--out", str(tmp_path / "r"), timeout=60),
                    "data.yaml", "aliases")  # fmt: skip


# --- 6. files over the size limit -----------------------------------------------------------


def test_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    big = root / "huge.png"
    with open(big, "wb") as fh:  # sparse: costs no disk
        fh.write(synth.png_bytes(np.zeros((8, 8, 3), np.uint8)))
        fh.truncate(DEFAULT_MAX_FILE_BYTES + 1)
    # peak memory of a fresh process (VmHWM; ru_maxrss would carry over pytest's, across exec)
    code = ("import re, sys; from auditor.io.decode import read_bytes; r = read_bytes(sys.argv[1]); "
            "print(r.kind, re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read())[1])")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code, str(big)], capture_output=True, text=True, timeout=60)
    kind, peak_kib = out.stdout.split()
    assert kind == "too_large" and int(peak_kib) < 300_000, out.stdout + out.stderr  # reading it costs 1 GiB

    from auditor.pipeline.api import scan

    _png(root / "ok.png")
    stat_before = big.stat()
    result = scan(root, tmp_path / "r", embed=False, cache_dir=tmp_path / "c")
    corrupt = [f for f in result.findings if f.check == "corrupt"]
    assert [f.paths for f in corrupt] == [["huge.png"]]
    assert (
        "1,073,741,825 bytes, over the 1 GiB limit" in corrupt[0].message
        and corrupt[0].details["reason"] == "too_large"
    )
    after = big.stat()
    assert (after.st_size, after.st_mtime_ns) == (stat_before.st_size, stat_before.st_mtime_ns)


# --- over-long names in the cleaned output ----------------------------------------------------


def test_clean_shortens_over_long_names_and_keeps_the_full_label(tmp_path):
    """A 300-character class (manifest label), a 400-byte one (two bytes a character, cut on a
    character boundary) and two 254-byte file names that meet in one class folder (the second
    gets a ``__1`` suffix, over the limit): every name written is at most 255 bytes, names
    never collide, manifest.csv keeps the full labels, and a rerun writes the same paths."""
    from typer.testing import CliRunner

    from auditor.cli.app import app

    root = tmp_path / "ds"
    long_file = "f" * 250 + ".png"
    labels = {"a/" + long_file: "L" * 300, "b/" + long_file: "L" * 300, "c/x.png": "é" * 200,
              "c/y.png": "é" * 199 + "è", "d/z.png": "short"}  # fmt: skip
    for seed, rel in enumerate(labels):
        _png(root / rel, seed)
    pd.DataFrame({"path": list(labels), "label": list(labels.values()), "split": "train"}).to_csv(
        root / "manifest.csv", index=False
    )
    before = tree_digest(root)
    out = tmp_path / "clean"
    args = ["clean", str(root), "--no-embed", "--manifest", str(root / "manifest.csv"), "--out", str(out)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    names = [p for p in out.rglob("*") if p != out]
    assert all(len(os.fsencode(p.name)) <= 255 for p in names)
    m = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert dict(zip(m["source_path"], m["label"], strict=True)) == labels  # the full labels
    assert m["path"].is_unique and all((out / p).is_file() for p in m["path"])
    short = dict(zip(m["source_path"], m["path"], strict=True))
    assert short["d/z.png"] == "train/short/z.png"  # short names stay as they were
    assert Path(short["c/x.png"]).parent != Path(short["c/y.png"]).parent  # same first 255 bytes, two folders
    assert Path(short["c/x.png"]).parent.name.startswith("é" * 100)  # cut between characters, not inside one
    assert CliRunner().invoke(app, args).exit_code == 0
    assert pd.read_csv(out / "manifest.csv", keep_default_na=False)["path"].tolist() == m["path"].tolist()
    assert tree_digest(root) == before


def test_shortened_names_fit_keep_the_extension_and_never_meet():
    from auditor.pipeline.clean import MAX_NAME_BYTES, _fit_name

    a, b = "x" * 300 + "a.jpeg", "x" * 300 + "b.jpeg"
    fa, fb = _fit_name(a, is_file=True), _fit_name(b, is_file=True)
    assert fa != fb and fa.endswith(".jpeg") and fa == _fit_name(a, is_file=True)
    assert len(os.fsencode(fa)) <= MAX_NAME_BYTES and len(os.fsencode(_fit_name("日" * 100))) <= MAX_NAME_BYTES
    assert _fit_name("y" * 255) == "y" * 255  # fits: unchanged
    assert not _fit_name("z" * 300 + "." + "q" * 40, is_file=True).endswith("q" * 40)  # no long "extension"
