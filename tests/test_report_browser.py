"""The HTML report in a real headless Chromium (Debian's ``chromium`` driven by Playwright;
nothing is downloaded): it opens with no console errors and no network requests, its
sections and the embedding map render, the hover thumbnail works, a file named like an
HTML tag shows as text and runs nothing, the diagnosis renders first, and the split and
class filters hide the findings of other splits and classes.

Skipped when Chromium or Playwright is missing, unless AUDITOR_REQUIRE_BROWSER=1 (CI sets it).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from auditor.demo import synth
from auditor.pipeline import api

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
EVIL = "<img src=x onerror=alert(1)>.png"


def _need_browser():
    required = os.environ.get("AUDITOR_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed (pip install -e '.[dev]')")
    if not Path(CHROMIUM).exists():
        if required:
            raise FileNotFoundError(f"{CHROMIUM}: install Debian's chromium (apt-get install chromium)")
        pytest.skip("chromium is not installed")
    return sync_playwright


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    crops = synth.random_crops(56, 96, seed=71)
    for i, (_n, rgb) in enumerate(crops[:28]):
        synth.write(root / "src" / ("a" if i % 2 else "b") / f"{i}.jpg", synth.jpeg_bytes(rgb, 90))
    for i, (_n, rgb) in enumerate(crops[28:]):
        synth.write(root / "ds" / ("a" if i % 2 else "b") / f"{i}.jpg", synth.jpeg_bytes(synth.blur(rgb, 2.5), 90))
    synth.write(root / "ds" / "a" / EVIL, synth.png_bytes(synth.darken(crops[0][1])))  # a finding, with its name
    result = api.scan(root / "ds", root / "out", source=root / "src")
    assert any(EVIL.split("/")[-1] in f.paths[0] for f in result.findings if f.paths)
    return result.files["html"]


def test_report_opens_clean_renders_and_escapes(report, tmp_path):
    sync_playwright = _need_browser()
    console, requests, dialogs, errors = [], [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: console.append(m) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(report.as_uri())
        page.wait_for_load_state("load")

        assert not errors and not [m.text for m in console], (errors, [m.text for m in console])
        external = [u for u in requests if not u.startswith(("file:", "data:"))]
        assert external == [] and dialogs == []
        for section in ("shift", "leakage", "dark", "domain_shift", "label_issue"):
            assert page.locator(f"#{section}").count() == 1, section
        assert "Gate" in page.locator(".banner").inner_text()
        points = json.loads((report.parent / "report.json").read_text())["projection"]["points"]
        assert points == 57 and page.locator("svg circle").count() == points  # every image of both sets
        assert page.locator(".hist polyline").count() >= 2  # overlaid property histograms
        assert page.locator(".bar").count() > 0  # overview charts
        # the hostile file name is text, never markup
        assert page.locator("img[src='x']").count() == 0
        assert page.get_by_text(EVIL, exact=False).count() >= 1
        # hover thumbnail on the map
        dot = page.locator("circle[data-t]").first
        dot.hover(force=True)
        hover = page.locator("#hover")
        assert hover.is_visible() and hover.get_attribute("src").startswith("data:image/jpeg;base64,")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert dialogs == []


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> Path:
    """The demo dataset (findings in train and in val, a diagnosis), scanned without embeddings."""
    from auditor.demo.build import build_demo

    root = tmp_path_factory.mktemp("demo")
    build_demo(root / "ds")
    return api.scan(root / "ds", root / "out", embed=False, cache_dir=root / "cache").files["html"]


def _expected_visible(report: dict, split: str | None, label: str | None) -> int:
    """Findings the filters should leave visible, worked out from report.json and the demo's
    ``split/class/file`` layout alone (not from the page's data attributes): a finding matches
    when one of its paths does; one without paths, when its details name the split or class."""
    n = 0
    for f in report["findings"]:
        if f["paths"]:
            parts = [p.split("/") for p in f["paths"]]
            ok = any((split is None or q[0] == split) and (label is None or q[1] == label) for q in parts)
        else:
            d = f["details"]
            ok = (split is None or split == d.get("split") or split in (d.get("splits") or [])) and (
                label is None or label == d.get("label"))  # fmt: skip
        n += ok
    return n


def test_demo_report_diagnosis_first_and_filters_work(demo_report):
    sync_playwright = _need_browser()
    report = json.loads((demo_report.parent / "report.json").read_text())
    assert report["diagnosis"] and len(report["findings"]) < 60  # every finding is drawn (no cap)
    visible = ".finding[data-splits]:visible"
    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url))
        page.goto(demo_report.as_uri())
        page.wait_for_load_state("load")
        assert not errors and not console, (errors, console)
        assert [u for u in requests if not u.startswith(("file:", "data:"))] == []

        # the diagnosis is the first thing after the verdict banner, above the rules and every finding
        assert page.evaluate("document.querySelector('.banner').nextElementSibling.id") == "diagnosis"
        top = page.locator("#diagnosis").bounding_box()["y"]
        assert top < page.locator(".banner").bounding_box()["y"] + 200
        assert top < page.locator("#fix-first").bounding_box()["y"] < page.locator("#rules").bounding_box()["y"]
        assert all(top < box["y"] for box in (s.bounding_box() for s in page.locator("section.check").all()))
        cards = page.locator("#diagnosis .cause")
        assert cards.count() == len(report["diagnosis"])
        assert cards.first.locator("b").inner_text() == report["diagnosis"][0]["cause"]
        assert page.locator("#diagnosis .cause figure img").count() >= 1  # evidence thumbnails
        # the sticky navigation stays on screen when the page scrolls
        page.locator("#findings").scroll_into_view_if_needed()
        page.mouse.wheel(0, 3000)
        page.wait_for_timeout(100)
        assert 0 <= page.locator("nav.top").bounding_box()["y"] <= 1
        assert f"Findings ({len(report['findings'])})" in page.locator("nav.top").inner_text()

        total = page.locator(visible).count()
        assert total == len(report["findings"]) == _expected_visible(report, None, None)
        val = _expected_visible(report, "val", None)
        assert 0 < val < total and _expected_visible(report, "train", None) < total  # findings in both splits
        page.select_option("#filter-split", label="val")
        assert page.locator(visible).count() == val
        assert page.locator("#filter-count").inner_text() == f"{val} of {total} findings shown"
        for finding in page.locator(visible).all():  # each shown finding has a val image (or names val)
            captions = finding.locator("figcaption").all_inner_texts()
            assert not captions or any(c.startswith("val/") for c in captions), captions
        page.select_option("#filter-split", label="train")
        assert page.locator(visible).count() == _expected_visible(report, "train", None)
        page.select_option("#filter-split", label="all")
        assert page.locator(visible).count() == total

        coffee = _expected_visible(report, None, "coffee")
        assert 0 < coffee < total
        page.select_option("#filter-class", label="coffee")
        assert page.locator(visible).count() == coffee
        heading = page.locator("h2#leakage .shown").inner_text()
        assert heading.startswith("(") and heading.endswith(" shown)")
        page.select_option("#filter-split", label="val")
        assert page.locator(visible).count() == _expected_visible(report, "val", "coffee")
        page.select_option("#filter-class", label="all")
        page.select_option("#filter-split", label="all")
        assert page.locator(visible).count() == total and page.locator("h2#leakage .shown").inner_text() == ""
        assert not errors and not console, (errors, console)
        browser.close()


def test_detection_report_draws_boxes_without_errors(tmp_path):
    """A COCO dataset with every box defect: the Boxes table and the flagged boxes drawn
    over their thumbnails render with no console errors (degenerate boxes included)."""
    sync_playwright = _need_browser()
    from auditor.demo.build import make_coco

    make_coco(tmp_path / "coco")
    html = api.scan(tmp_path / "coco", tmp_path / "out", embed=False, cache_dir=tmp_path / "c").files["html"]
    console, errors = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: console.append(m.text) if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(html.as_uri())
        page.wait_for_load_state("load")
        assert not errors and not console, (errors, console)
        for section in ("boxes", "box_out_of_bounds", "box_duplicate", "box_style_shift"):
            assert page.locator(f"#{section}").count() == 1, section
        rect = page.locator("#box_out_of_bounds ~ .finding .boxed rect").first
        box, img = rect.bounding_box(), page.locator("#box_out_of_bounds ~ .finding .boxed img").first.bounding_box()
        assert box["width"] > 5 and box["x"] + box["width"] > img["x"] + img["width"]  # drawn, past the edge
        browser.close()


def test_report_size_is_bounded_for_a_huge_dataset(tmp_path):
    """100,000 images with thousands of findings: the HTML stays far below 20 MB (sections are
    capped, thumbnails have a global budget, the per-image table is not embedded)."""
    import numpy as np
    import pandas as pd

    from auditor.io.dataset import Discovery
    from auditor.io.store import Store
    from auditor.pipeline.api import check_context, run_checks
    from auditor.policy.rules import load_rules
    from auditor.report.build import build_report
    from auditor.report.html import render_html

    n = 100_000
    rng = np.random.default_rng(0)
    table = pd.DataFrame({
        "path": [f"train/c{i % 500}/{EVIL[:-4]}{i}.jpg" for i in range(n)], "abs_path": "", "split": "train",
        "label": [f"c{i % 500}" for i in range(n)], "ext": ".jpg", "content_hash": None, "ok": True,
        "format": "JPEG", "width": rng.integers(32, 4000, n), "height": rng.integers(32, 4000, n),
        "error_kind": None, "error": None, "pixel_hash": [f"{i:x}" for i in range(n)], "phash": 0, "dhash": 0,
        "mode": "RGB", "brightness_p95": rng.uniform(0, 255, n), "brightness_p05": rng.uniform(0, 50, n),
        "brightness_mean": rng.uniform(0, 255, n), "contrast": rng.uniform(0, 80, n), "entropy": rng.uniform(0, 8, n),
        "sharpness": rng.uniform(0, 1, n), "fine_sharpness": rng.uniform(0, 1, n),
        "detail_ratio": rng.normal(-0.5, 0.4, n),
        "noise_sigma": rng.uniform(0, 30, n),
        "channel_spread": rng.uniform(0, 60, n), "colorfulness": rng.uniform(0, 80, n), "laplacian_var": 1.0,
    })  # fmt: skip
    rules = load_rules()
    ctx = check_context(table, rules)
    findings = run_checks(ctx, rules, only=["dark", "bright", "blurry", "noisy", "low_contrast", "class_imbalance"])
    assert len(findings) > 5_000
    disc = Discovery(root=tmp_path, layout="split-folders", items=table[["path", "abs_path", "split", "label", "ext"]],
                     skipped={}, missing=[])  # fmt: skip
    report = build_report(disc, table, findings, rules, None, ctx)
    html = render_html(report, table, None, Store(None))
    size = len(html.encode())
    assert size < 20_000_000, size
    print(f"report.html for {n} images and {len(findings)} findings: {size / 1e6:.1f} MB")
    assert "<img src=x" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
