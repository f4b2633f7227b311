"""Nothing escapes and nothing lands where it does not belong: outputs only under --out and the
cache folder (never in the dataset or the installed package), workers gone with their parent,
unreadable files never fine, no raw control characters on the terminal, no formulas in CSV
cells, malformed inputs and full disks refused in one line (exit 2, no traceback)."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tree_digest
from typer.testing import CliRunner

import auditor
from auditor.cli.app import app
from auditor.demo import synth
from auditor.pipeline import api

runner = CliRunner()
CLI = [sys.executable, "-c", "from auditor.cli.app import main; main()"]
#: what must never reach a terminal raw: C0 (but newline), DEL, C1, bidirectional controls
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _refused(res, *words: str) -> str:
    """Assert exit 2 with one line on stderr (no traceback) that holds every word; return it."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert "Traceback" not in res.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def small(tmp_path, tiles):
    """Eight images in train/val folders (one leaked) and an empty file (a stable finding)."""
    root = tmp_path / "ds"
    for i in range(6):
        name, px = tiles[i * 5]
        synth.write(root / ("val" if i % 3 == 0 else "train") / name / f"{i}.jpg", synth.jpeg_bytes(px, 90))
    leak = synth.jpeg_bytes(tiles[40][1], 90)
    synth.write(root / "train" / "x" / "leak.jpg", leak)
    synth.write(root / "val" / "x" / "leak.jpg", leak)
    synth.write(root / "train" / "x" / "empty.jpg", b"")
    return root


@pytest.fixture()
def tmpfs(tmp_path):
    """``mount(name, options) -> folder``: a tmpfs (size-limited or read-only) mounted for the
    test and unmounted after; skips where mounting is not allowed."""
    mounted: list[Path] = []

    def mount(name: str, options: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


# -- 1. nothing is written into the dataset ----------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["scan", "{ds}", "--no-embed", "--out", "{ds}/report"],
        ["scan", "{ds}", "--no-embed", "--out", "{link}/report"],  # a link into the dataset
        ["gate", "{ds}", "--no-embed", "--out", "{ds}/train/report"],
        ["gate", "{ds}", "--no-embed", "--out", "{tmp}/o", "--junit", "{ds}/gate.xml"],
        ["run", "{ds}", "--out", "{ds}/run", "--epochs", "1"],
        ["embed", "{ds}", "--out", "{ds}/vectors.npz"],
    ],
    ids=["scan", "scan-via-link", "gate", "gate-junit", "run", "embed"],
)
def test_outputs_inside_the_dataset_are_refused(tmp_path, small, command):
    (tmp_path / "link").symlink_to(small)
    before = tree_digest(small)
    args = [a.format(ds=small, link=tmp_path / "link", tmp=tmp_path) for a in command]
    _refused(runner.invoke(app, args), "inside the dataset")
    assert tree_digest(small) == before
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_default_output_folder_inside_the_dataset_is_refused_with_a_suggestion(small, monkeypatch):
    monkeypatch.chdir(small)
    before = tree_digest(small)
    line = _refused(runner.invoke(app, ["scan", ".", "--no-embed"]), "inside the dataset", "--out")
    assert "../reports/ds" in line  # the folder a user would pick: beside the dataset
    monkeypatch.chdir(small / "train")
    _refused(runner.invoke(app, ["gate", "..", "--no-embed"]), "inside the dataset")
    assert tree_digest(small) == before and not (small / "reports").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["scan", "{ds}", "--no-embed", "--out", "{tmp}/o", "--cache-dir", "{ds}/cache"],
        ["scan", "{ds}", "--no-embed", "--out", "{tmp}/o", "--cache-dir", "{link}/train/.cache", "--no-cache"],
        ["gate", "{ds}", "--no-embed", "--out", "{tmp}/o", "--cache-dir", "{ds}/cache"],
        ["clean", "{ds}", "--no-embed", "--out", "{tmp}/o", "--cache-dir", "{ds}"],
        ["embed", "{ds}", "--out", "{tmp}/o/v.npz", "--cache-dir", "{ds}/cache"],
        ["finetune", "{ds}", "--out", "{tmp}/o", "--cache-dir", "{ds}/cache"],
        ["run", "{ds}", "--out", "{tmp}/o", "--cache-dir", "{ds}/cache"],
    ],
    ids=["scan", "scan-via-link", "gate", "clean", "embed", "finetune", "run"],
)
def test_cache_folder_inside_the_dataset_is_refused(tmp_path, small, command):
    (tmp_path / "link").symlink_to(small)
    before = tree_digest(small)
    args = [a.format(ds=small, link=tmp_path / "link", tmp=tmp_path) for a in command]
    _refused(runner.invoke(app, args), "--cache-dir", "inside the dataset")
    assert tree_digest(small) == before
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_api_scan_refuses_a_cache_folder_inside_the_dataset(tmp_path, small):
    from auditor.core.fsutil import OutputError

    before = tree_digest(small)
    with pytest.raises(OutputError, match="inside the dataset"):
        api.scan(small, tmp_path / "o", embed=False, cache_dir=small / "cache")
    assert tree_digest(small) == before


# -- 2. outputs that cannot be written ------------------------------------------------------------


def _read_only_folder(tmp_path, tmpfs) -> Path:
    """A folder nothing can be written into: root writes through permissions, so for root a
    read-only file system."""
    if os.geteuid() == 0:
        return tmpfs("ro", "ro,size=64k")
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    return folder


def test_read_only_working_folder_without_out_is_one_line(tmp_path, small, monkeypatch, tmpfs):
    monkeypatch.chdir(_read_only_folder(tmp_path, tmpfs))
    _refused(runner.invoke(app, ["scan", str(small), "--no-embed"]), "--out")
    _refused(runner.invoke(app, ["demo"]), "--out")


def test_out_naming_a_file_is_one_line(tmp_path, small):
    afile = tmp_path / "taken"
    afile.write_text("not a folder\n")
    _refused(runner.invoke(app, ["scan", str(small), "--no-embed", "--out", str(afile)]), "not a folder")
    _refused(runner.invoke(app, ["scan", str(small), "--no-embed", "--out", str(afile / "sub")]), "not a folder")
    (tmp_path / "v.npz").mkdir()
    _refused(runner.invoke(app, ["embed", str(small), "--out", str(tmp_path / "v.npz")]), "not a file")
    assert afile.read_text() == "not a folder\n"


@pytest.mark.parametrize("command", ["finetune", "run"])
def test_model_and_run_outputs_get_the_checks_of_scans(tmp_path, small, tmpfs, command):
    """--out of finetune and run: not inside the dataset, not a file, not under a file, not
    read-only; each refused in one line before any work (no model is loaded)."""
    afile = tmp_path / "taken"
    afile.write_text("not a folder\n")
    before = tree_digest(small)
    _refused(runner.invoke(app, [command, str(small), "--out", str(small / "model")]), "--out", "inside the dataset")
    _refused(runner.invoke(app, [command, str(small), "--out", str(afile)]), "--out", "not a folder")
    _refused(runner.invoke(app, [command, str(small), "--out", str(afile / "m")]), "--out", "not a folder")
    ro = _read_only_folder(tmp_path, tmpfs)
    _refused(runner.invoke(app, [command, str(small), "--out", str(ro / "m")]), "--out", "read-only")
    assert afile.read_text() == "not a folder\n" and tree_digest(small) == before


# -- 3. no runtime cache inside the installed package ---------------------------------------------


def _snapshot(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")}


def test_no_runtime_cache_is_written_into_the_installed_package(tmp_path, small):
    """A copy of the package stands in for an installed one (another engineer's edits to the
    working tree cannot disturb the comparison); Python's own .pyc writes are turned off."""
    package = Path(auditor.__file__).resolve().parent
    site = tmp_path / "site"
    shutil.copytree(package, site / "auditor", ignore=shutil.ignore_patterns("__pycache__"))
    if not (site / "auditor" / "presets").is_dir():  # a source tree: presets live in rules/
        shutil.copytree(package.parent / "rules", site / "rules")
    before = _snapshot(site)
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "AUDITOR_NO_JIT")}
    env.update(PYTHONPATH=str(site), AUDITOR_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1")
    # SMALL_SCAN_IMAGES 0: measured with the compiled kernels, as a larger data set would be
    code = (f"import auditor; assert auditor.__file__.startswith({str(site)!r}), auditor.__file__\n"
            "import auditor.measure.batch as batch; batch.SMALL_SCAN_IMAGES = 0\n"
            "from auditor.cli.app import main; main()")  # fmt: skip
    for extra in ([], ["--no-cache"]):  # no store: the compiled-code caches still go to the cache folder
        done = subprocess.run([sys.executable, "-c", code, "scan", str(small), "--no-embed", "--workers", "2",
                               "--out", str(tmp_path / "out"), *extra], env=env, cwd=tmp_path,
                              capture_output=True, text=True)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert _snapshot(site) == before
    assert list(cache.rglob("*.nbi")), "numba's cache belongs in the cache folder"
    # the report template comes compiled ahead of time (auditor/report/precompile.py) under the
    # Jinja that compiled it; under another, Jinja compiles it and caches it in the cache folder
    from auditor.report import precompile

    ahead = precompile.load(precompile._env(None)) is not None
    assert bool(list(cache.rglob("jinja2-*"))) is not ahead, "a template cache belongs in the cache folder"


# -- 4. workers die with their parent ----------------------------------------------------------


def _state(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) from /proc, None when the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1])


def _alive(pid: int) -> bool:
    st = _state(pid)
    return st is not None and st[0] not in "ZX"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _state(int(entry))
            if st is not None and st[1] == pid and st[0] not in "ZX":
                out.append(int(entry))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_the_scan_is_killed(tmp_path):
    photo = synth.jpeg_bytes(synth.load_photo("astronaut"), 90)
    for i in range(400):
        synth.write(tmp_path / "ds" / f"{i:03d}.jpg", photo)
    env = {**os.environ, "AUDITOR_NO_JIT": "1"}  # the numpy reference: slower per image, no compile wait
    proc = subprocess.Popen([*CLI, "scan", str(tmp_path / "ds"), "--no-embed", "--no-cache", "--workers", "2",
                             "--out", str(tmp_path / "out")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 180
        while len(workers) < 2:
            assert proc.poll() is None, "the scan ended before both workers were seen"
            assert time.monotonic() < deadline, "no workers started"
            time.sleep(0.05)
            workers = _children(proc.pid)
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 10
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "workers outlived the killed scan"
    finally:
        proc.kill()
        proc.wait()
        for w in workers:  # started by this test: never leave them behind
            with contextlib.suppress(OSError):
                os.kill(w, 9)


# -- 5. an unreadable file is never fine -------------------------------------------------------


def _deny_reading(monkeypatch, path: Path) -> None:
    """Make ``path`` unreadable the way chmod 000 does for a user (the tests run as root,
    who reads everything): opening it fails (open() and os.open) and os.access says no."""
    import builtins

    real_open, real_os_open, real_access = builtins.open, os.open, os.access

    def guarded_open(file, *a, **kw):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *a, **kw)

    def guarded_os_open(file, *a, **kw):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_os_open(file, *a, **kw)

    def guarded_access(file, mode, *a, **kw):
        if str(file) == str(path) and mode & os.R_OK:
            return False
        return real_access(file, mode, *a, **kw)

    monkeypatch.setattr(builtins, "open", guarded_open)
    monkeypatch.setattr(os, "open", guarded_os_open)
    monkeypatch.setattr(os, "access", guarded_access)


def _corrupt(report_path: Path) -> list[list[str]]:
    report = json.loads(report_path.read_text())
    return [f["paths"] for f in report["findings"] if f["check"] == "corrupt"]


def test_unreadable_file_is_corrupt_even_when_the_cache_measured_it(tmp_path, tiles, monkeypatch):
    root = tmp_path / "ds"
    for i in range(3):
        synth.write(root / f"{i}.jpg", synth.jpeg_bytes(tiles[i][1]))
    locked = synth.write(root / "locked.jpg", synth.jpeg_bytes(tiles[5][1]))
    scan = ["scan", str(root), "--no-embed", "--workers", "1", "--out"]
    assert runner.invoke(app, [*scan, str(tmp_path / "o1")]).exit_code == 0
    assert _corrupt(tmp_path / "o1" / "report.json") == []
    _deny_reading(monkeypatch, locked)
    # the measurement cache (no reuse of the whole scan in the API)
    result = api.scan(root, write=False, embed=False, workers=1)
    assert [f.paths for f in result.findings if f.check == "corrupt"] == [["locked.jpg"]]
    # and through the CLI, whose whole-scan reuse must not replay the readable past
    res = runner.invoke(app, [*scan, str(tmp_path / "o2")])
    assert res.exit_code == 0, res.output
    assert "unchanged since the last scan" not in res.output
    assert _corrupt(tmp_path / "o2" / "report.json") == [["locked.jpg"]]


def test_another_users_scan_is_not_replayed(tmp_path, small, monkeypatch):
    scan = ["scan", str(small), "--no-embed", "--out"]
    assert runner.invoke(app, [*scan, str(tmp_path / "o1")]).exit_code == 0
    again = runner.invoke(app, [*scan, str(tmp_path / "o2")])
    assert "unchanged since the last scan" in again.output  # reuse works for the same user
    monkeypatch.setattr(os, "geteuid", lambda: 4321)
    other = runner.invoke(app, [*scan, str(tmp_path / "o3")])
    assert other.exit_code == 0, other.output
    assert "unchanged since the last scan" not in other.output


# -- 6. no raw control characters on the terminal ---------------------------------------------

EVIL_NAMES = ["clear\x1b[2J\x1b[H.jpg", "csi\u009b31m.jpg", "bidi\u202egpj.exe.jpg", "bell\x07\x7f.jpg",
              "line\u2028sep.jpg"]  # fmt: skip


def test_control_characters_in_names_never_reach_the_terminal(tmp_path, tiles):
    root = tmp_path / "odd"
    for i, (_, px) in enumerate(tiles[:23]):
        synth.write(root / "train" / "a" / f"{i}.jpg", synth.jpeg_bytes(px, 90))
    data = synth.jpeg_bytes(tiles[30][1], 90)
    for name in EVIL_NAMES:
        synth.write(root / "train" / "a" / name, data)
        synth.write(root / "val" / "a" / name, data)  # leakage: the names are in every table
    scan = runner.invoke(app, ["scan", str(root), "--no-embed", "-o", str(tmp_path / "o")])
    gate = runner.invoke(app, ["gate", str(root), "--no-embed", "-o", str(tmp_path / "o")],
                         env={"GITHUB_ACTIONS": "true"})  # fmt: skip
    missing = runner.invoke(app, ["scan", str(tmp_path / "gone\x1b[2J"), "--no-embed"])
    for res, code in ((scan, 0), (gate, 1), (missing, 2)):
        assert res.exit_code == code, res.output
        assert not RAW_CONTROL.search(res.output), repr(RAW_CONTROL.search(res.output))
    assert "Gate: failed" in scan.output and "Gate: failed" in gate.output
    assert "\\x1b[2J" in scan.output.replace("\n", "")  # shown, escaped, not obeyed


# -- 7. CSV cells a spreadsheet would run ----------------------------------------------------------

FORMULAS = ['=HYPERLINK("http:x";"y")', "+1+1", "@SUM(A1)", "-2+3"]


def _csv_cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [cell for row in csv.reader(fh) for cell in row]


def test_clean_writes_no_formula_cells(tmp_path, tiles):
    root = tmp_path / "ds"
    for k, label in enumerate(FORMULAS):
        for i in range(3):
            synth.write(root / label / f"{i}.jpg", synth.jpeg_bytes(tiles[k * 3 + i][1], 90))
    res = runner.invoke(app, ["clean", str(root), "--out", str(tmp_path / "clean"), "--no-embed"])
    assert res.exit_code == 0, res.output
    cells = _csv_cells(tmp_path / "clean" / "manifest.csv")
    assert not [c for c in cells if c[:1] in ("=", "+", "-", "@", "\t", "\r")]
    for label in FORMULAS:
        assert "'" + label in cells  # kept readable, neutralised as OWASP advises
    assert (tmp_path / "clean" / FORMULAS[0] / "0.jpg").is_file()  # the folders keep their real names


def test_clean_boxes_csv_has_no_formula_cells(tmp_path, tiles):
    root = tmp_path / "coco"
    images, anns = [], []
    for i in range(4):
        synth.write(root / "images" / f"{i}.jpg", synth.jpeg_bytes(tiles[i][1], 90))
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 128, "height": 128})
        anns.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [10, 10, 40, 40]})
    cats = [{"id": 1, "name": "=1+1"}, {"id": 2, "name": "@cmd"}]
    synth.write(root / "annotations" / "instances_train.json",
                json.dumps({"images": images, "annotations": anns, "categories": cats}).encode())  # fmt: skip
    res = runner.invoke(app, ["clean", str(root), "--out", str(tmp_path / "clean"), "--no-embed"])
    assert res.exit_code == 0, res.output
    cells = _csv_cells(tmp_path / "clean" / "boxes.csv")
    assert "'=1+1" in cells and "'@cmd" in cells
    assert not [c for c in cells if c[:1] in ("=", "+", "@", "\t", "\r")]


# -- 8. malformed reports and rules -----------------------------------------------------------------


@pytest.fixture()
def report_file(tmp_path, small):
    res = runner.invoke(app, ["scan", str(small), "--no-embed", "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    return tmp_path / "r" / "report.json"


def _set(path: list, value):
    def edit(report):
        node = report
        for key in path[:-1]:
            node = node[key]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return edit


MALFORMED = {
    "finding without check": (_set(["findings", 0, "check"], KeyError), "$.findings[0].check"),
    "paths not a list": (_set(["findings", 0, "paths"], "a.jpg"), "$.findings[0].paths"),
    "score not a number": (_set(["findings", 0, "score"], "high"), "$.findings[0].score"),
    "finding not an object": (_set(["findings", 0], None), "$.findings[0]"),
    "passed as a string": (_set(["gate", "passed"], "false"), "$.gate.passed"),
    "unknown status": (_set(["gate", "rules", 0, "status"], "FAIL"), "$.gate.rules[0].status"),
    "passed with a failing rule": (_set(["gate", "passed"], True), "$.gate.passed"),
    "rule without value": (_set(["gate", "rules", 0, "value"], KeyError), "$.gate.rules[0].value"),
    "enabled not a bool": (_set(["checks", "leakage", "enabled"], "yes"), "$.checks.leakage.enabled"),
    "images negative": (_set(["dataset", "images"], -1), "$.dataset.images"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
@pytest.mark.parametrize("rules", [[], ["--rules", "default"]], ids=["as-recorded", "rejudged"])
def test_malformed_report_is_refused_naming_the_json_path(tmp_path, report_file, case, rules):
    edit, where = MALFORMED[case]
    report = json.loads(report_file.read_text())
    assert not report["gate"]["passed"]  # the leak fails it: every edit must not turn into a pass
    edit(report)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(report))
    _refused(runner.invoke(app, ["gate", "--from-report", str(bad), *rules]), where + ":")


def test_deeply_nested_report_is_one_line(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text('{"schema": "auditor.report/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    _refused(runner.invoke(app, ["gate", "--from-report", str(deep)]), "deep.json")


def test_rules_alias_bomb_is_refused_quickly(tmp_path, small):
    """A billion-laughs list where a number is expected: formatting it for the type error
    took gigabytes. Run in a child with a memory ceiling so a regression fails, not swaps."""
    levels = ["&l0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"&l{k} [{', '.join([f'*l{k - 1}'] * 10)}]" for k in range(1, 9)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("extends: default\nsettings:\n  min_images_for_relative: [" + ", ".join(levels) + "]\n")
    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "from auditor.cli.app import main; main()")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, "scan", str(small), "--no-embed", "--rules", str(bomb),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "bomb.yaml" in lines[0] and len(lines[0]) < 500


# -- 9. full disks --------------------------------------------------------------------------------


def test_full_cache_degrades_to_an_uncached_scan(tmp_path, small, monkeypatch):
    """sqlite says 'database or disk is full' on every write: the scan still reports, with
    one warning line."""
    real_connect = sqlite3.connect

    class FullDisk:
        def __init__(self, db):
            self._db = db

        def __getattr__(self, name):
            return getattr(self._db, name)

        def __enter__(self):
            return self._db.__enter__()

        def __exit__(self, *exc):
            return self._db.__exit__(*exc)

        def executemany(self, *args):
            raise sqlite3.OperationalError("database or disk is full")

    def connect(path, *args, **kwargs):  # the disk is full, memory is not
        db = real_connect(path, *args, **kwargs)
        return db if path == ":memory:" else FullDisk(db)

    monkeypatch.setattr(sqlite3, "connect", connect)
    res = runner.invoke(app, ["scan", str(small), "--no-embed", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    warnings = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "cache" in warnings[0], res.stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["dataset"]["images"] == 9


def test_full_cache_file_system_degrades_to_an_uncached_scan(tmp_path, small, tmpfs):
    cache = tmpfs("cache", "size=48k")
    res = runner.invoke(app, ["scan", str(small), "--no-embed", "--cache-dir", str(cache),
                              "--out", str(tmp_path / "o")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Traceback" not in res.output
    assert json.loads((tmp_path / "o" / "report.json").read_text())["dataset"]["images"] == 9


def test_full_output_is_one_line_and_nothing_half_written(tmp_path, small, monkeypatch):
    """The second file of the report hits ENOSPC: exit 2, and no report file is left."""
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "new" / "report"
    _refused(runner.invoke(app, ["scan", str(small), "--no-embed", "--out", str(out)]), "No space left")
    assert not (tmp_path / "new").exists()  # the folders it made are gone too


@pytest.mark.parametrize("command", ["scan", "clean"])
def test_full_output_file_system_is_one_line_and_nothing_half_written(tmp_path, small, tmpfs, command):
    disk = tmpfs("out", "size=64k")
    (disk / "filler").write_bytes(b"\0" * 40_000)  # leaves room to start, not to finish
    before = tree_digest(small)
    _refused(runner.invoke(app, [command, str(small), "--no-embed", "--out", str(disk / "o")]), "space")
    assert sorted(p.name for p in disk.iterdir()) == ["filler"]
    assert tree_digest(small) == before


def test_full_disk_while_building_the_demo_is_one_line_and_nothing_half_built(tmp_path, monkeypatch):
    real_write, calls = synth.write, []

    def write(path, data):
        calls.append(path)
        if len(calls) > 5:
            raise OSError(28, "No space left on device", str(path))
        return real_write(path, data)

    monkeypatch.setattr(synth, "write", write)
    out = tmp_path / "demo"
    _refused(runner.invoke(app, ["demo", "--out", str(out)]), "No space left", "demo")
    assert len(calls) == 6  # it stopped at the first failed write
    assert not (out / "dataset").exists()  # the half-built dataset is gone


def test_demo_over_a_folder_it_did_not_build_is_one_line(tmp_path):
    (tmp_path / "demo" / "dataset").mkdir(parents=True)
    (tmp_path / "demo" / "dataset" / "mine.txt").write_text("keep me\n")
    _refused(runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")]), "not a demo dataset")
    assert (tmp_path / "demo" / "dataset" / "mine.txt").read_text() == "keep me\n"


def test_full_disk_while_building_the_detection_demo_leaves_nothing(tmp_path, monkeypatch):
    from auditor.core.fsutil import OutputError
    from auditor.demo.build import make_coco

    def write(path, data):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(synth, "write", write)
    with pytest.raises(OutputError, match="No space left"):
        make_coco(tmp_path / "new" / "coco")
    assert not (tmp_path / "new").exists()
