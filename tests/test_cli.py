"""End to end through the CLI: a dataset of real images with every defect injected."""

import builtins
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import tree_digest
from typer.testing import CliRunner

from auditor.cli.app import app
from auditor.demo import synth

runner = CliRunner()


def build(root, tiles):
    """Split-folders dataset of real photo tiles with one of every defect injected.
    Returns {(check, path)} expected and the list of clean paths."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(tiles))
    clean, spare = order[:48], iter(order[48:].tolist())
    clean_paths = []
    for k, i in enumerate(clean):
        name, px = tiles[i]
        rel = f"{'val' if k % 4 == 0 else 'train'}/{name}/{name}_{i:03d}.jpg"
        synth.write(root / rel, synth.jpeg_bytes(px, 92))
        clean_paths.append(rel)
    expected = set()

    def add(check, rel, data):
        synth.write(root / rel, data)
        expected.add((check, rel))

    def px():
        return tiles[next(spare)][1]

    add("corrupt", "train/x/zero.jpg", b"")
    add("corrupt", "train/x/truncated.jpg", synth.truncated_jpeg(px()))
    add("corrupt", "train/x/random.jpg", synth.random_bytes(3000))
    add("corrupt", "train/x/bomb.png", synth.bomb_png())
    add("format_mismatch", "train/x/png_named.jpg", synth.png_bytes(px()))
    d = synth.jpeg_bytes(px(), 92)
    add("exact_duplicate", "train/y/dup1.jpg", d)
    add("exact_duplicate", "train/y/dup2.jpg", d)
    p = px()
    add("near_duplicate", "train/y/orig.jpg", synth.jpeg_bytes(p, 92))
    add("near_duplicate", "train/y/q40.jpg", synth.near_copy_bytes(p, 40, 0.9))
    d = synth.jpeg_bytes(px(), 92)
    add("leakage", "train/z/leak.jpg", d)
    add("leakage", "val/z/leak.jpg", d)
    p = px()
    add("leakage", "train/z/leak_near.jpg", synth.jpeg_bytes(p, 92))
    add("leakage", "test/z/leak_near.jpg", synth.near_copy_bytes(p, 40, 0.9))
    add("low_resolution", "train/z/small.jpg", synth.jpeg_bytes(synth.downscale(px(), 4), 92))
    add(
        "odd_aspect_ratio",
        "train/z/strip.jpg",
        synth.jpeg_bytes(np.ascontiguousarray(np.tile(px()[:30], (1, 4, 1))), 92),
    )
    add("odd_size", "train/z/huge.jpg", synth.jpeg_bytes(synth.load_photo("astronaut"), 92))
    add("blurry", "train/z/blur.jpg", synth.jpeg_bytes(synth.blur(px(), 3), 92))
    add("noisy", "train/z/noise.png", synth.png_bytes(synth.add_noise(px(), 30)))
    add("dark", "train/z/dark.jpg", synth.jpeg_bytes(synth.darken(px()), 92))
    add("bright", "train/z/bright.jpg", synth.jpeg_bytes(synth.overexpose(px()), 92))
    add("low_contrast", "train/z/flat.jpg", synth.jpeg_bytes(synth.wash_out(px()), 92))
    add("low_information", "train/z/blank.png", synth.png_bytes(synth.blank((128, 128))))
    add("grayscale", "train/z/gray.jpg", synth.jpeg_bytes(synth.to_grayscale_rgb(px()), 92))
    return expected, clean_paths


@pytest.fixture()
def dataset(tmp_path, tiles):
    root = tmp_path / "ds"
    expected, clean = build(root, tiles)
    return root, expected, clean


def scan(*args):
    return runner.invoke(app, ["scan", *map(str, args)])


def test_every_injected_defect_is_reported_with_few_false_alarms(dataset, tmp_path):
    root, expected, clean = dataset
    before = tree_digest(root)
    res = scan(root, "--out", tmp_path / "out", "--no-embed", "--workers", "2")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["schema"] == "auditor.report/1"
    found = {(f["check"], p) for f in report["findings"] for p in f["paths"]}
    missing = expected - found
    assert not missing, missing
    # false alarms: warning/error findings on clean images
    alarms = {p for f in report["findings"] if f["severity"] != "info" for p in f["paths"] if p in clean}
    assert len(alarms) <= 0.05 * len(clean), alarms
    assert report["dataset"]["unreadable"] == 4
    assert report["dataset"]["layout"] == "split-folders"
    assert not report["gate"]["passed"]  # leakage is an error
    assert tree_digest(root) == before  # the dataset is never modified
    assert sorted(os.listdir(tmp_path / "out")) == ["images.parquet", "report.html", "report.json"]
    import pandas as pd

    table = pd.read_parquet(tmp_path / "out" / "images.parquet")
    assert len(table) == report["dataset"]["images"]
    assert table.set_index("path").loc["train/z/blur.jpg", "is_blurry"]


def test_same_input_same_report(dataset, tmp_path):
    root, _, _ = dataset
    scan(root, "--out", tmp_path / "a", "--no-embed", "--workers", "2")
    scan(root, "--out", tmp_path / "b", "--no-embed", "--workers", "1", "--no-cache")
    a = (tmp_path / "a" / "report.json").read_bytes()
    assert a == (tmp_path / "b" / "report.json").read_bytes()


def test_permission_denied_file_is_a_finding(tmp_path, tiles, monkeypatch):
    root = tmp_path / "ds"
    for i in range(3):
        synth.write(root / f"{i}.jpg", synth.jpeg_bytes(tiles[i][1]))
    locked = root / "locked.jpg"
    synth.write(locked, synth.jpeg_bytes(tiles[5][1]))
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads everything: make the open fail the way it does for a user
        real_open = builtins.open

        def guarded(file, *a, **kw):
            if str(file) == str(locked):
                raise PermissionError(13, "Permission denied")
            return real_open(file, *a, **kw)

        monkeypatch.setattr(builtins, "open", guarded)
    res = scan(root, "--out", tmp_path / "out", "--no-embed", "--workers", "1")
    locked.chmod(0o644)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    corrupt = [f for f in report["findings"] if f["check"] == "corrupt"]
    assert [f["paths"] for f in corrupt] == [["locked.jpg"]]
    assert "permission denied" in corrupt[0]["message"]


def test_file_names_are_escaped_in_html(tmp_path, tiles):
    root = tmp_path / "ds"
    evil = '"><script>alert(1)</script>.jpg'
    synth.write(root / evil, b"")
    synth.write(root / "ok.jpg", synth.jpeg_bytes(tiles[0][1]))
    res = scan(root, "--out", tmp_path / "out", "--no-embed")
    assert res.exit_code == 0, res.output
    html = (tmp_path / "out" / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_exit_code_2_on_input_errors(tmp_path, tiles):
    res = scan(tmp_path / "missing", "--no-embed")
    assert res.exit_code == 2 and "dataset not found" in res.output
    (tmp_path / "empty").mkdir()
    res = scan(tmp_path / "empty", "--no-embed")
    assert res.exit_code == 2 and "no images" in res.output
    synth.write(tmp_path / "ds" / "a.jpg", synth.jpeg_bytes(tiles[0][1]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("extends: default\nchecks:\n  blury: {severity: info}\n")
    res = scan(tmp_path / "ds", "--no-embed", "--rules", bad)
    assert res.exit_code == 2 and "unknown check" in res.output
    m = tmp_path / "m.csv"
    m.write_text("path,label\n../../etc/passwd,x\n")
    res = scan(tmp_path / "ds", "--no-embed", "--manifest", m)
    assert res.exit_code == 2 and "escapes" in res.output


def test_default_out_dir_is_reports_dataset_name(tmp_path, tiles, monkeypatch):
    synth.write(tmp_path / "mydata" / "a.jpg", synth.jpeg_bytes(tiles[0][1]))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    res = scan(tmp_path / "mydata", "--no-embed")
    assert res.exit_code == 0, res.output
    assert (work / "reports" / "mydata" / "report.json").exists()


def test_help_and_no_embed_scan_do_not_import_tensorflow(tmp_path, tiles):
    synth.write(tmp_path / "ds" / "a.jpg", synth.jpeg_bytes(tiles[0][1]))
    code = (
        "import sys\n"
        "from auditor.cli.app import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        f"res = r.invoke(app, ['scan', {str(tmp_path / 'ds')!r}, '--no-embed', '--out', {str(tmp_path / 'o')!r}])\n"
        "assert res.exit_code == 0, res.output\n"
        "bad = [m for m in ('tensorflow', 'keras', 'umap', 'torch') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_demo_finds_every_injected_defect(tmp_path):
    res = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert res.exit_code == 0, res.output
    defects = json.loads((tmp_path / "demo" / "dataset" / "defects.json").read_text())
    assert f"Injected defects found: {len(defects)}/{len(defects)}" in res.output
    assert (tmp_path / "demo" / "report.html").exists()
    assert "Injected box defects found: 11/11" in res.output  # the COCO part: every box_* check
    assert (tmp_path / "demo" / "detection" / "report.html").exists()


def test_dataset_where_nothing_decodes_is_reported_not_a_crash(tmp_path):
    synth.write(tmp_path / "ds" / "a.jpg", synth.random_bytes(300))
    synth.write(tmp_path / "ds" / "b.png", b"")
    synth.write(tmp_path / "ds" / "c.jpg", synth.truncated_jpeg(synth.digit(0), keep=0.1))
    res = scan(tmp_path / "ds", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["dataset"]["unreadable"] == 3
    assert {f["check"] for f in report["findings"]} == {"corrupt"}


def test_scan_gate_and_run_share_one_definition_of_each_scan_option():
    """Every option that changes what a scan finds is accepted by scan, gate and run, with the
    same flags, help, type and default (one definition each, auditor.cli.options.SHARED_SCAN_OPTIONS),
    and shows in each command's --help."""
    import typer.main

    from auditor.cli.options import SHARED_SCAN_OPTIONS

    group = typer.main.get_command(app)

    def described(command: str) -> dict:
        out = {}
        for param in group.commands[command].params:
            if param.param_type_name != "option":
                continue
            # the option's type: typer >= 0.29 keeps the annotation, earlier ones a click type
            kind = (param.type_descriptor.annotation if hasattr(param, "type_descriptor")
                    else (type(param.type).__name__, sorted(vars(param.type).items())))  # fmt: skip
            for flag in param.opts:
                out[flag] = (tuple(param.opts), tuple(param.secondary_opts), param.help, param.default,
                             repr(kind), getattr(param, "min", getattr(param.type, "min", None)),
                             getattr(param, "max", getattr(param.type, "max", None)),
                             param.is_flag)  # fmt: skip
        return out

    scan_opts, gate_opts, run_opts = described("scan"), described("gate"), described("run")
    for flag in SHARED_SCAN_OPTIONS:
        assert flag in scan_opts and flag in gate_opts and flag in run_opts, flag
        assert scan_opts[flag] == gate_opts[flag] == run_opts[flag], flag
    for command in ("scan", "gate", "run"):
        shown = runner.invoke(app, [command, "--help"], terminal_width=200).output
        assert all(flag in shown for flag in SHARED_SCAN_OPTIONS), command
    # the fine-tuning options of run are finetune's
    tune = described("finetune")
    for flag in ("--epochs", "--unfreeze", "--learning-rate", "--image-size", "--augment", "--seed"):
        assert tune[flag] == run_opts[flag], flag
