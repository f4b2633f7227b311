"""`audit scan` reuses its outputs when nothing it reads has changed, and only then."""

import builtins
import json
import os
import time

import pytest
from typer.testing import CliRunner

from auditor.cli.app import app
from auditor.demo import synth
from auditor.io import reuse
from auditor.io.store import Store
from auditor.pipeline import api
from auditor.policy.rules import rules_files

runner = CliRunner()


@pytest.fixture
def dataset(tmp_path, tiles):
    root = tmp_path / "ds"
    for i in range(6):
        name, px = tiles[i * 7]
        synth.write(root / ("val" if i % 3 == 0 else "train") / name / f"{i}.jpg", synth.jpeg_bytes(px, 90))
    synth.write(root / "train" / "x" / "empty.jpg", b"")  # a corrupt file is a stable finding
    return root


@pytest.fixture
def full_scans(monkeypatch):
    """Counts the scans that really ran (api.scan calls) behind the CLI."""
    calls = []
    real = api.scan

    def counting(*args, **kwargs):
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(api, "scan", counting)
    return calls


def _scan(root, out, *extra):
    res = runner.invoke(app, ["scan", str(root), "--no-embed", "--out", str(out), *extra])
    assert res.exit_code == 0, res.output
    return res.output


def _later(path):
    """Give ``path`` a newer mtime (same content) even on a coarse-clock file system."""
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_unchanged_rescan_writes_the_same_outputs_without_scanning(tmp_path, dataset, full_scans):
    first = _scan(dataset, tmp_path / "o1")
    second = _scan(dataset, tmp_path / "o2")
    assert len(full_scans) == 1
    assert "unchanged since the last scan" in second and "unchanged since" not in first
    for name in ("report.json", "report.html", "images.parquet"):
        assert (tmp_path / "o1" / name).read_bytes() == (tmp_path / "o2" / name).read_bytes(), name
    assert "corrupt" in second  # the summary is printed from the reused report
    assert "embeddings: skipped (--no-embed)" in second


@pytest.mark.parametrize(
    "change",
    [
        "touch an image",
        "replace an image",
        "add a file",
        "remove a file",
        "other options",
        "rules file",
        "env",
        "keras env",
    ],
)
def test_any_change_scans_again(tmp_path, dataset, full_scans, tiles, monkeypatch, change):
    rules = tmp_path / "rules.yaml"
    rules.write_text("extends: default\n")
    _scan(dataset, tmp_path / "o1", "--rules", str(rules))
    image = next(dataset.rglob("1.jpg"))
    extra = ["--rules", str(rules)]
    if change == "touch an image":
        _later(image)
    elif change == "replace an image":
        image.write_bytes(synth.jpeg_bytes(tiles[40][1], 90))
    elif change == "add a file":
        (dataset / "notes.txt").write_text("hello")
    elif change == "remove a file":
        image.unlink()
    elif change == "other options":
        extra += ["--layout", "split-folders"]
    elif change == "rules file":
        time.sleep(0.01)
        rules.write_text("extends: strict\n")
        _later(rules)
    elif change == "env":
        monkeypatch.setenv("AUDITOR_NO_JIT", "1")
    elif change == "keras env":
        monkeypatch.setenv("KERAS_BACKEND", "jax")  # could change embeddings (not used by --no-embed)
    out = _scan(dataset, tmp_path / "o2", *extra)
    assert len(full_scans) == 2, change
    assert "unchanged since the last scan" not in out
    assert _scan(dataset, tmp_path / "o3", *extra) and len(full_scans) == 2  # and the new state is reused


def test_rules_extends_chain_is_part_of_the_fingerprint(tmp_path, dataset, full_scans):
    from auditor.policy.rules import preset_path

    base = tmp_path / "base.yaml"
    base.write_text("extends: default\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\n")
    assert rules_files(str(child)) == [child, base, preset_path("default")]
    _scan(dataset, tmp_path / "o1", "--rules", str(child))
    base.write_text("extends: lenient\n")
    _later(base)
    _scan(dataset, tmp_path / "o2", "--rules", str(child))
    assert len(full_scans) == 2


def test_no_cache_never_reuses_or_records(tmp_path, dataset, full_scans):
    _scan(dataset, tmp_path / "o1", "--no-cache")
    _scan(dataset, tmp_path / "o2", "--no-cache")
    _scan(dataset, tmp_path / "o3")
    assert len(full_scans) == 3


@pytest.mark.parametrize("failure", ["permission denied", "decoder crash"])
def test_files_the_next_scan_retries_are_not_recorded(tmp_path, dataset, full_scans, monkeypatch, failure):
    """A file that could not be read (permission denied; root reads everything, so open()
    is made to fail) or that killed a decoder worker is tried again by the next scan, so
    that scan's outputs must not be reused."""
    from auditor.measure import batch as extract

    victim = str(next(dataset.rglob("1.jpg")))
    target = (builtins, "open") if failure == "permission denied" else (extract, "measure_file")
    real = getattr(*target)

    def failing(path, *a, **kw):
        if str(path) != victim:
            return real(path, *a, **kw)
        if failure == "permission denied":
            raise PermissionError(13, "Permission denied")
        return None, {"error_kind": "decoder_crash", "error": "the decoder crashed on this file"}, None

    monkeypatch.setattr(*target, failing)
    _scan(dataset, tmp_path / "o1", "--workers", "1")
    monkeypatch.setattr(*target, real)
    _scan(dataset, tmp_path / "o2", "--workers", "1")
    assert len(full_scans) == 2
    corrupt = [
        f for f in json.loads((tmp_path / "o2" / "report.json").read_text())["findings"] if f["check"] == "corrupt"
    ]
    assert all(not p.endswith("1.jpg") for f in corrupt for p in f["paths"])


def test_a_damaged_or_hostile_record_is_ignored(tmp_path, dataset, full_scans):
    _scan(dataset, tmp_path / "o1")
    r = reuse.prepare(dataset, options={}, cache_dir=os.environ["AUDITOR_CACHE_DIR"])
    good = {"json": ("report.json", b"{}"), "html": ("report.html", b"<p>")}
    assert reuse._unpack(reuse._pack(r.fingerprint, good), r.fingerprint) == good
    assert reuse._unpack(reuse._pack(r.fingerprint, good), "other") is None
    assert reuse._unpack(reuse._pack(r.fingerprint, good)[:-1], r.fingerprint) is None  # truncated
    hostile = {"json": ("report.json", b"{}"), "html": ("../../escape.html", b"x")}
    assert reuse._unpack(reuse._pack(r.fingerprint, hostile), r.fingerprint) is None
    # a record replaced by garbage: the next scan runs in full and replaces it
    with Store(Store.default_path(os.environ["AUDITOR_CACHE_DIR"])) as store:
        keys = [k for (k,) in store._db.execute("SELECT key FROM results WHERE key LIKE 'scan:%'")]
        assert len(keys) == 1
        store.put_result(keys[0], b"not a record")
    _scan(dataset, tmp_path / "o2")
    assert len(full_scans) == 2
    assert not (tmp_path / "escape.html").exists()


def test_gate_after_scan_reuses_the_scan_and_judges_its_report(tmp_path, dataset, full_scans):
    _scan(dataset, tmp_path / "o1")
    res = runner.invoke(app, ["gate", str(dataset), "--no-embed", "--out", str(tmp_path / "o2"),
                              "--junit", str(tmp_path / "junit.xml")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert len(full_scans) == 1
    assert (tmp_path / "o2" / "report.json").read_bytes() == (tmp_path / "o1" / "report.json").read_bytes()
    assert "corrupt" in (tmp_path / "junit.xml").read_text()
    res = runner.invoke(app, ["gate", str(dataset), "--no-embed", "--rules", "strict", "--out", str(tmp_path / "o3")])
    assert len(full_scans) == 2  # other rules: scanned (and judged) again


def test_a_source_manifest_and_its_images_are_part_of_the_fingerprint(tmp_path, dataset, full_scans, tiles):
    src = tmp_path / "src"
    rows = ["path,label"]
    for i in range(4):
        synth.write(src / f"s{i}.jpg", synth.jpeg_bytes(tiles[50 + i][1], 90))
        rows.append(f"s{i}.jpg,x")
    manifest = src / "list.csv"
    manifest.write_text("\n".join(rows) + "\n")
    args = ("--source", str(manifest), "--no-projection")
    _scan(dataset, tmp_path / "o1", *args)
    manifest.write_text("\n".join(rows[:3]) + "\n")
    _later(manifest)
    _scan(dataset, tmp_path / "o2", *args)
    assert len(full_scans) == 2
    synth.write(src / "s0.jpg", synth.jpeg_bytes(tiles[60][1], 90))  # an image the manifest lists
    _later(src / "s0.jpg")
    _scan(dataset, tmp_path / "o3", *args)
    assert len(full_scans) == 3


def test_presets_and_model_files_are_part_of_the_fingerprint(tmp_path, dataset):
    from auditor.policy.rules import preset_path

    assert rules_files(None) == [preset_path("default")]
    child = tmp_path / "child.yaml"
    child.write_text("extends: strict\n")
    assert rules_files(str(child)) == [child, preset_path("strict"), preset_path("default")]
    model = tmp_path / "model.keras"
    model.write_bytes(b"one")
    opts = {"backbone": str(model)}
    before = reuse.prepare(dataset, options=opts, extra_files=[model]).fingerprint
    model.write_bytes(b"other model")
    assert reuse.prepare(dataset, options=opts, extra_files=[model]).fingerprint != before


def test_fingerprinting_survives_link_loops_and_unresolvable_paths(tmp_path, dataset):
    (dataset / "train" / "up").symlink_to("..")  # a loop when links are followed
    (dataset / "train" / "up2").symlink_to("..")
    start = time.perf_counter()
    assert reuse.prepare(dataset, options={}, follow_symlinks=True) is not None
    assert time.perf_counter() - start < 5
    loop = tmp_path / "loop.csv"
    loop.symlink_to(loop)
    assert reuse.prepare(dataset, options={}, extra_files=[loop]) is not None  # its state: "cannot stat"
    res = runner.invoke(
        app, ["scan", str(dataset), "--no-embed", "--manifest", str(loop), "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 2, res.output  # the scan's own one-line input error, no traceback


@pytest.mark.parametrize(
    "header",
    [
        b"[]",
        b'{"format": 1}',
        b'{"format": 1, "fingerprint": "F", "files": [["json"]]}',
        b'{"format": 1, "fingerprint": "F", "files": [["json", 3, 0]]}',
        b'{"format": 1, "fingerprint": "F", "files": [["json", "a\\u0000b", 0]]}',
        b'{"format": 1, "fingerprint": "F", "files": [["json", "report.json", 0]]}',
    ],
)
def test_malformed_records_are_refused_not_raised(header):
    assert reuse._unpack(header + b"\n", "F") is None


def test_the_api_reuses_an_unchanged_scan_as_the_cli_does(tmp_path, dataset, full_scans):
    import auditor

    first = auditor.scan(dataset, tmp_path / "a1", embed=False)
    assert len(full_scans) == 1 and not first.reused
    second = auditor.scan(dataset, tmp_path / "a2", embed=False)
    assert len(full_scans) == 1 and second.reused
    for name in ("report.json", "report.html", "images.parquet"):
        assert (tmp_path / "a1" / name).read_bytes() == (tmp_path / "a2" / name).read_bytes(), name
    assert second.report == json.loads((tmp_path / "a1" / "report.json").read_bytes())
    assert second.passed == first.passed
    assert second.table["path"].tolist() == first.table["path"].tolist()  # read from images.parquet
    assert [(f.check, f.paths, f.severity) for f in second.findings] == [
        (f["check"], f["paths"], f["severity"]) for f in first.report["findings"]
    ]
    _scan(dataset, tmp_path / "c1")  # the CLI finds the record the API made, and the other way round
    assert len(full_scans) == 1
    auditor.scan(dataset, tmp_path / "a3", embed=False, projection=False)  # another option: scans
    assert len(full_scans) == 2
    auditor.gate(dataset, out=tmp_path / "g", embed=False)  # the gate scans through auditor.scan too
    assert len(full_scans) == 2


def test_scan_options_are_defined_once():
    """The reuse key's defaults are auditor.pipeline.api.scan's own (one definition, held by this test)."""
    import inspect

    from auditor.pipeline.scan import SCAN_OPTIONS

    params = inspect.signature(api.scan).parameters
    assert {k: params[k].default for k in SCAN_OPTIONS} == SCAN_OPTIONS
    # everything else is where, how fast or whether to cache, not what the outputs say
    assert set(params) - set(SCAN_OPTIONS) == {"dataset", "out", "rules", "workers", "cache_dir", "use_cache",
                                               "write", "progress", "engine"}  # fmt: skip
