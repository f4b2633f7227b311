"""One small real-image fixture per validation domain (benchmarks/domains.py: images shipped
inside pip packages): the default gate passes on the clean version, few clean images are
flagged, and the injected defects are found (benchmarks/validate.py measures the same
at scale; these are the CI-sized versions)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from domains import DOMAINS, REQUIRES, _missing  # noqa: E402

from auditor.demo.validation import build_versions, clean_summary, read_truth, score_injected  # noqa: E402
from auditor.pipeline.api import scan  # noqa: E402

#: Domains with the format their images ship in.
FORMATS = {"photos": "jpg", "digits": "png", "products": "png", "textures": "png", "documents": "png",
           "small_color": "png"}  # fmt: skip
#: Defects found without the backbone in every domain (crops and label issues need it).
HASH_AND_PIXEL = ("corrupt", "exact_duplicate", "leakage", "mirror_copy", "label_conflict", "dark", "bright",
                  "low_resolution")  # fmt: skip


@pytest.fixture(scope="module", params=list(FORMATS))
def versions(request, tmp_path_factory):
    domain = request.param
    if _missing(domain):
        pytest.skip(f"{domain}: pip install {' '.join(REQUIRES[domain])}")
    images = DOMAINS[domain](90, seed=3)
    root = tmp_path_factory.mktemp(domain)
    dirs = build_versions(images, root, fmt=FORMATS[domain], n_clean=66, per_strength=1, seed=3)
    return domain, dirs


def test_clean_version_passes_the_default_gate_and_few_images_are_flagged(versions):
    domain, dirs = versions
    report = scan(dirs["clean"], write=False, embed=False).report
    summary = clean_summary(report)
    assert summary["gate_passed"], (domain, [f["message"] for f in report["findings"] if f["severity"] == "error"])
    assert summary["errors"] == 0
    # the goal is 1% per check, met here by digits, products and documents; photos,
    # small photos and textures (smooth moon and aerial tiles: low_contrast, blurry) still show
    # up to 4 of 66 (benchmarks/RESULTS.md has the 500-image numbers)
    flagged = {c: round(share * report["dataset"]["images"]) for c, share in summary["shares"].items()}
    assert max(flagged.values(), default=0) <= (1 if domain in ("digits", "products", "documents") else 4), (
        domain, flagged)  # fmt: skip


def test_injected_defects_are_found(versions):
    domain, dirs = versions
    report = scan(dirs["injected"], write=False, embed=False).report
    rows = {(r["defect"], r["strength"]): r for r in score_injected(report, read_truth(dirs["injected"]))}
    missed = {d: rows[(d, "all")]["recall"] for d in HASH_AND_PIXEL if rows[(d, "all")]["recall"] < 1.0}
    assert not missed, (domain, missed)
    # copies are verified at the pixel level: nothing but injected copies and their originals
    for check in ("exact_duplicate", "near_duplicate", "leakage", "label_conflict"):
        precision = next(r["precision"] for r in rows.values() if r["check"] == check)
        assert precision == 1.0, (domain, check, precision)


@pytest.mark.parametrize(("domain", "crops_found"), [("photos", 1.0), ("small_color", 0.5)])
def test_with_the_backbone_crops_are_found_and_clean_gates_still_pass(domain, crops_found, tmp_path):
    """With embeddings (the default scan, where each image's 5 nearest backbone neighbours
    also go to the crop search): crops of photos and of 32-px photos are found as near
    duplicates, no distinct pair passes as a copy, and the clean version still passes. (At
    66 images the similarity candidates already catch these crops; the nearest-neighbour
    candidates matter at 500 - benchmarks/RESULTS.md - and here must not add false copies.)"""
    if _missing(domain):
        pytest.skip(f"{domain}: pip install {' '.join(REQUIRES[domain])}")
    images = DOMAINS[domain](90, seed=3)
    dirs = build_versions(images, tmp_path, fmt=FORMATS[domain], n_clean=66, per_strength=1, seed=3)
    cache = tmp_path / "cache"
    clean = scan(dirs["clean"], write=False, embed=True, projection=False, cache_dir=cache).report
    assert clean_summary(clean)["gate_passed"], [f["message"] for f in clean["findings"] if f["severity"] == "error"]
    report = scan(dirs["injected"], write=False, embed=True, projection=False, cache_dir=cache).report
    rows = {(r["defect"], r["strength"]): r for r in score_injected(report, read_truth(dirs["injected"]))}
    assert rows[("crop_copy", "all")]["recall"] >= crops_found, rows[("crop_copy", "all")]
    for check in ("exact_duplicate", "near_duplicate", "leakage", "label_conflict"):
        precision = next(r["precision"] for r in rows.values() if r["check"] == check)
        assert precision == 1.0, (check, precision)
