"""A small data set is measured with the numpy reference (no numba, no scipy: the fixed cost of
a small scan), a large one with the compiled kernels; the two agree to float32 rounding, not bit
for bit, so the cache keeps their rows apart and a data set's report is the same whatever the
cache holds (issue 17 part 4a)."""

import json
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

from auditor.demo import synth
from auditor.io.store import Store
from auditor.measure import batch
from auditor.measure.pixels import MEASURE_VERSION, REFERENCE_VERSION
from auditor.pipeline import api


@pytest.fixture
def small(tmp_path, tiles):
    root = tmp_path / "data"
    for i, (_name, rgb) in enumerate(tiles[:10]):
        synth.write(root / ("a" if i % 2 else "b") / f"{i}.png", synth.png_bytes(rgb))
    synth.write(root / "a" / "copy.png", synth.png_bytes(tiles[0][1]))  # a finding with thumbnails
    return root


def _report(root, out, cache) -> bytes:
    api.scan(root, out, embed=False, cache_dir=cache, workers=1)
    return (out / "report.json").read_bytes()


def _versions(cache) -> dict[int, int]:
    with sqlite3.connect(cache / "store.sqlite3") as db:
        return dict(db.execute("SELECT version, COUNT(*) FROM measurements GROUP BY version").fetchall())


def test_a_small_scan_imports_neither_numba_nor_scipy(small, tmp_path):
    code = (
        "import sys\nfrom auditor.cli.app import main\n"
        f"sys.argv = ['audit', 'scan', {str(small)!r}, '--no-embed', '--cache-dir', {str(tmp_path / 'c')!r},"
        f" '--out', {str(tmp_path / 'o')!r}, '-q']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'numba', 'llvmlite', 'scipy', 'sklearn', 'tensorflow', 'umap', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "o" / "report.json").read_text())["dataset"]["images"] == 11


def test_a_small_data_set_gives_the_same_report_whatever_the_cache_holds(small, tmp_path):
    fresh = _report(small, tmp_path / "o1", tmp_path / "c1")
    assert _versions(tmp_path / "c1") == {REFERENCE_VERSION: 10}
    # a cache that holds the compiled kernels' rows of the same files (a larger scan made them)
    with Store(tmp_path / "c2" / "store.sqlite3") as store:
        batch.measure_all([str(p) for p in sorted(small.rglob("*.png"))], store, workers=1)
    assert _versions(tmp_path / "c2") == {MEASURE_VERSION: 10}
    assert _report(small, tmp_path / "o2", tmp_path / "c2") == fresh
    assert _versions(tmp_path / "c2") == {MEASURE_VERSION: 10, REFERENCE_VERSION: 10}
    html = (tmp_path / "o2" / "report.html").read_text()
    assert html == (tmp_path / "o1" / "report.html").read_text() and "data:image/jpeg;base64," in html


def test_a_large_data_set_gives_the_same_report_whatever_the_cache_holds(small, tmp_path, monkeypatch):
    _report(small, tmp_path / "o1", tmp_path / "c1")  # small: the reference's rows
    monkeypatch.setattr(batch, "SMALL_SCAN_IMAGES", 4)  # now the same files make a large data set
    fresh = _report(small, tmp_path / "o2", tmp_path / "c2")
    assert _versions(tmp_path / "c2") == {MEASURE_VERSION: 10}
    assert _report(small, tmp_path / "o3", tmp_path / "c1") == fresh
    assert _versions(tmp_path / "c1") == {MEASURE_VERSION: 10, REFERENCE_VERSION: 10}


def test_small_means_few_files_and_few_pixels_in_their_working_copies(small, tmp_path, monkeypatch):
    opts = batch.ExtractOptions()
    paths = [str(p) for p in sorted(small.rglob("*.png"))]
    assert not batch.options_for_files(opts, paths).compiled
    assert batch.store_version(batch.options_for_files(opts, paths)) == REFERENCE_VERSION
    monkeypatch.setattr(batch, "SMALL_SCAN_IMAGES", len(paths) - 1)
    assert batch.options_for_files(opts, paths).compiled
    monkeypatch.undo()
    # 2048 x 1536 photos are measured at 1024 x 768: five fit in 4 M pixels, six do not
    flat = synth.png_bytes(np.zeros((1536, 2048, 3), np.uint8))
    big = [synth.write(tmp_path / f"big{i}.png", flat) for i in range(6)]
    assert batch.SMALL_SCAN_PIXELS == 4_000_000
    assert not batch.options_for_files(opts, [str(p) for p in big[:5]]).compiled
    assert batch.options_for_files(opts, [str(p) for p in big]).compiled
    # files the scan will not decode cost their per-image part only
    junk = [str(tmp_path / "missing.png"), str(tmp_path), str(small / "a" / "1.png") + ".nope"]
    assert not batch.options_for_files(opts, junk * 50).compiled
