"""A small data set is measured with the numpy reference (no numba, no scipy: the fixed cost of
a small scan), a large one with the compiled kernels; the two agree to float32 rounding, not bit
for bit, so the cache keeps their rows apart and a data set's report is the same whatever the
cache holds (issue 17 part 4a)."""

import json
import sqlite3
import subprocess
import sys

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


def test_the_reference_is_used_up_to_the_threshold():
    opts = batch.ExtractOptions()
    assert not batch.options_for_size(opts, batch.SMALL_SCAN_IMAGES).compiled
    assert batch.options_for_size(opts, batch.SMALL_SCAN_IMAGES + 1).compiled
    assert batch.store_version(batch.options_for_size(opts, 1)) == REFERENCE_VERSION
