"""`audit report` draws report.html again from report.json and images.parquet (and
projection.parquet) alone: the same bytes as the scan's own page."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from auditor.cli.app import app
from auditor.demo import synth

runner = CliRunner()


def _dataset(root, n=40, source=False):
    """Photo crops in train/val (val darkened, so the split comparison has a property to draw)
    a corrupt file and a copy; with ``source``, a second set of crops."""
    crops = synth.random_crops(n, 96, seed=3)
    for i, (name, px) in enumerate(crops):
        split = "val" if i % 4 == 0 else "train"
        img = synth.darken(px, 0.5) if split == "val" else px
        synth.write(root / split / name / f"{i}.jpg", synth.jpeg_bytes(img, 90))
    synth.write(root / "train" / "x" / "broken.jpg", b"not an image")
    name, px = crops[1]
    synth.write(root / "train" / name / "copy.png", synth.png_bytes(px))  # a near copy: findings with pictures
    if source:
        for i, (name, px) in enumerate(synth.random_crops(n, 96, seed=4)):
            synth.write(root.parent / "src" / name / f"s{i}.jpg", synth.jpeg_bytes(px, 90))
    return root


def _same_page_again(tmp_path, out):
    before = (out / "report.html").read_bytes()
    again = tmp_path / "again"
    res = runner.invoke(app, ["report", str(out / "report.json"), "--out", str(again)])
    assert res.exit_code == 0, res.output
    assert (again / "report.html").read_bytes() == before
    # and in place, over the scan's own page
    res = runner.invoke(app, ["report", str(out / "report.json")])
    assert res.exit_code == 0, res.output
    assert (out / "report.html").read_bytes() == before
    return before


def test_rerendered_report_is_byte_identical_without_embeddings(tmp_path):
    data = _dataset(tmp_path / "ds")
    out = tmp_path / "o"
    res = runner.invoke(app, ["scan", str(data), "--no-embed", "--out", str(out)])
    assert res.exit_code == 0, res.output
    page = _same_page_again(tmp_path, out)
    assert b"broken.jpg" in page and b"data:image/jpeg;base64," in page  # findings with thumbnails


def test_rerendered_report_is_byte_identical_with_shift_histograms_and_projection(tmp_path):
    data = _dataset(tmp_path / "ds", n=60, source=True)
    out = tmp_path / "o"
    res = runner.invoke(app, ["scan", str(data), "--source", str(tmp_path / "src"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_bytes())
    assert report.get("projection") and (out / "projection.parquet").is_file()
    assert any(entry["histograms"] for entry in report["shift"])  # the bins are in report.json
    page = _same_page_again(tmp_path, out)
    assert b"<polyline" in page and b"histogram" in page


def test_a_missing_table_or_a_bad_report_is_one_line(tmp_path):
    data = _dataset(tmp_path / "ds", n=12)
    out = tmp_path / "o"
    assert runner.invoke(app, ["scan", str(data), "--no-embed", "--out", str(out)]).exit_code == 0
    (out / "images.parquet").unlink()
    res = runner.invoke(app, ["report", str(out / "report.json"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "images.parquet: not found" in res.output
    (tmp_path / "bad.json").write_text("{}")
    res = runner.invoke(app, ["report", str(tmp_path / "bad.json"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "not an image-auditor report" in res.output
    assert not (tmp_path / "x" / "report.html").exists()
