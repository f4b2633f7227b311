"""Unit tests per check family: each builds a small :class:`CheckContext` directly.

The tables are made by hand, one row per image with the columns a real scan gives
(:func:`auditor.pipeline.api.build_table`: the items columns, :data:`auditor.pipeline.api.MEASURED_COLUMNS`,
:data:`auditor.pipeline.api.HASH_COLUMNS`, ``pixel_hash``, ``ok`` ...), with plausible measurement
values drawn from narrow *uniform* ranges (seeded): a uniform sample has no tail, so no clean
row can sit more than about 1.4 robust SDs from its peers and every flag is the planted row's.
Checks run with the bundled default rules' params and settings, as a scan runs them.

Duplicates are verified at the pixel level on real JPEG thumbnails of small synthetic
images (``ctx.thumbnails``), with real perceptual hashes; embedding checks get an
:class:`auditor.embed.features.Embeddings` of hand-made numpy vectors (no TensorFlow).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from itertools import count

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from auditor.checks.catalog import load_all
from auditor.core.context import NO_EMBEDDINGS, CheckContext
from auditor.core.findings import Finding
from auditor.embed.features import Embeddings
from auditor.io.annotations import BOX_COLUMNS, Annotations
from auditor.measure.hashing import perceptual_hashes, pixel_hash
from auditor.pipeline.api import HASH_COLUMNS, MEASURED_COLUMNS
from auditor.policy.rules import load_rules

RULES = load_rules()
REGISTRY = load_all()
UNLABELED = "the dataset is unlabeled"
NOT_DETECTION = "not a detection dataset"


# --- building contexts ---------------------------------------------------------------------


def params(name: str) -> dict:
    """The default rules' params of check ``name`` (a copy)."""
    return dict(RULES.checks[name].params)


def run(name: str, ctx: CheckContext, **override) -> list[Finding]:
    """Run the registered check ``name`` on ``ctx`` with the default params (``override`` replaces some)."""
    findings = REGISTRY[name].fn(ctx, {**params(name), **override})
    assert all(isinstance(f, Finding) and f.check == name for f in findings)
    return findings


def context(table: pd.DataFrame, **kw) -> CheckContext:
    """A context as :func:`auditor.pipeline.api.check_context` fills it: the default rules' settings
    and shift params."""
    shift_params = {n: params(n) for n in ("domain_shift", "split_shift", "property_shift")}
    return CheckContext(table=table, settings=dict(RULES.settings), shift_params=shift_params, **kw)


def flagged(findings: list[Finding]) -> set[str]:
    """Every path any finding names."""
    return {p for f in findings for p in f.paths}


def image_findings(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.details.get("scope") != "dataset"]


def dataset_findings(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.details.get("scope") == "dataset"]


def _hex(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _u64(rng: np.random.Generator) -> int:
    return int.from_bytes(rng.bytes(8), "big")


#: Typical values of a decoded 640x480 photo: (low, high) of a uniform draw.
TYPICAL = {
    "brightness_mean": (110, 130), "brightness_p05": (20, 30), "brightness_p95": (195, 215),
    "contrast": (45, 55), "entropy": (7.1, 7.5), "sharpness": (0.57, 0.63), "fine_sharpness": (0.42, 0.48),
    "laplacian_var": (800, 1000), "detail_ratio": (1.1, 1.3), "noise_sigma": (2.6, 3.4),
    "channel_spread": (50, 70), "colorfulness": (34, 46),
}  # fmt: skip


def row(path: str, rng: np.random.Generator, *, split="train", label="cat", **values) -> dict:
    """One decoded image's row with typical measurements; ``values`` override any column."""
    r = {
        "path": path, "abs_path": f"/data/{path}", "split": split, "label": label, "ext": ".jpg",
        "content_hash": _hex("file:" + path), "file_size": int(rng.integers(40_000, 90_000)), "format": "JPEG",
        "width": 640, "height": 480, "mode": "RGB", "bit_depth": 8, "has_alpha": False, "transparent_fraction": 0.0,
        "n_frames": 1, "exif_rotated": False, "jpeg_quality": 90, "pixel_hash": _hex("pixels:" + path),
        **{k: float(rng.uniform(lo, hi)) for k, (lo, hi) in TYPICAL.items()},
        "phash": _u64(rng), "dhash": _u64(rng), "phash_mirror": _u64(rng), "error_kind": None, "error": None,
    }  # fmt: skip
    r.update(values)
    return r


def broken(path: str, kind: str, error: str, *, split="train", label="cat", ext=".jpg") -> dict:
    """A row that did not decode: no measurements, as build_table writes it."""
    r = {"path": path, "abs_path": f"/data/{path}", "split": split, "label": label, "ext": ext,
         "content_hash": None if kind == "missing" else _hex("file:" + path), "format": None, "mode": None,
         "pixel_hash": None, "error_kind": kind, "error": error, **dict.fromkeys(MEASURED_COLUMNS, np.nan),
         **dict.fromkeys(HASH_COLUMNS)}  # fmt: skip
    return r


def rows(n: int, seed: int = 0, *, labels=("cat", "dog"), split="train", **values) -> list[dict]:
    """``n`` clean rows, labels in turn (``labels=None``: unlabeled)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        label = labels[i % len(labels)] if labels else None
        out.append(row(f"{split or 'all'}/{label or 'images'}/{i:03d}.jpg", rng, split=split, label=label, **values))
    return out


def frame(records: list[dict]) -> pd.DataFrame:
    """The per-image table of ``records``, with build_table's dtypes where they matter:
    64-bit hashes as Python ints (object), ``ok`` = decoded."""
    template = row("x.jpg", np.random.default_rng(0))
    t = pd.DataFrame(records, columns=list(template)) if records else pd.DataFrame(columns=list(template))
    for col in HASH_COLUMNS:
        values = np.empty(len(t), dtype=object)
        values[:] = [r.get(col) for r in records]
        t[col] = pd.Series(values, index=t.index, dtype=object)
    for col in MEASURED_COLUMNS:
        t[col] = pd.to_numeric(t[col], errors="coerce")
    t["ok"] = t["error_kind"].isna()
    return t


def test_hand_made_table_has_the_scan_columns():
    t = frame(rows(4))
    assert set(MEASURED_COLUMNS) | set(HASH_COLUMNS) <= set(t.columns)
    assert {"path", "split", "label", "ext", "content_hash", "pixel_hash", "format", "mode", "ok"} <= set(t.columns)
    assert t["ok"].all() and t["phash"].dtype == object and isinstance(t["phash"].iloc[0], int)


# --- every check: empty and undecodable datasets ---------------------------------------------


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_check_returns_nothing_on_an_empty_table(name):
    ctx = context(frame([]))
    assert run(name, ctx) == []
    reason = ctx.skipped.get(name)
    assert reason is None or (isinstance(reason, str) and reason)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_only_corrupt_speaks_when_nothing_decoded(name):
    bad = [broken(f"train/cat/{i}.jpg", "truncated", "image file is truncated") for i in range(25)]
    found = run(name, context(frame(bad)))
    if name == "corrupt":
        assert flagged(found) == {r["path"] for r in bad}
    else:
        assert found == []


# --- integrity -----------------------------------------------------------------------------


def test_corrupt_flags_exactly_the_rows_that_did_not_decode():
    good = rows(20)
    bad = [
        broken("train/cat/cut.jpg", "truncated", "image file is truncated (3 bytes not processed)"),
        broken("train/dog/gone.jpg", "missing", "no such file"),
        broken("train/dog/gone2.jpg", "missing", "no such file"),
        broken("train/cat/zero.png", "empty", "0 bytes", ext=".png"),
    ]
    found = run("corrupt", context(frame(good[:10] + bad + good[10:])))
    assert [f.paths for f in found] == [[b["path"]] for b in bad]  # one finding per file, in table order
    by_path = {f.paths[0]: f for f in found}
    assert by_path["train/cat/cut.jpg"].details == {"reason": "truncated", "error": bad[0]["error"]}
    # the decoder's text names the kind already: said once, not "truncated (... truncated ...)"
    assert by_path["train/cat/cut.jpg"].message == "train/cat/cut.jpg: image file is truncated (3 bytes not processed)"
    assert by_path["train/cat/zero.png"].message == "train/cat/zero.png: file is empty (0 bytes)"
    assert "does not exist" in by_path["train/dog/gone.jpg"].message
    assert all(f.score == 1.0 for f in found)
    # findings of one kind and error share their details (a million missing rows, one dict)
    assert by_path["train/dog/gone.jpg"].details is by_path["train/dog/gone2.jpg"].details


def test_corrupt_is_silent_on_a_clean_table():
    assert run("corrupt", context(frame(rows(30)))) == []


def test_format_mismatch_compares_extension_with_decoded_format():
    rng = np.random.default_rng(1)
    records = [
        *rows(10),
        row("train/cat/png_as.jpg", rng, format="PNG"),  # the planted mismatch
        row("train/cat/long.jpeg", rng, ext=".jpeg"),  # another JPEG extension: fine
        row("train/cat/real.png", rng, ext=".png", format="PNG"),
        broken("train/cat/bad.png", "decode_failed", "cannot identify image", ext=".png"),  # format unknown
    ]
    found = run("format_mismatch", context(frame(records)))
    assert [f.paths for f in found] == [["train/cat/png_as.jpg"]]
    assert found[0].details == {"extension": ".jpg", "format": "PNG"}


# --- quality -------------------------------------------------------------------------------


def test_blurry_flags_the_planted_blurred_image_only():
    rng = np.random.default_rng(7)
    blurred = row("train/cat/blurred.jpg", rng, fine_sharpness=0.15, sharpness=0.25)
    found = run("blurry", context(frame(rows(40) + [blurred])))
    assert [f.paths for f in found] == [["train/cat/blurred.jpg"]]
    assert found[0].score == pytest.approx(0.85)
    assert found[0].details["fine_sharpness"] == pytest.approx(0.15)


def test_blurry_needs_both_scales_to_agree():
    rng = np.random.default_rng(7)
    # fine detail gone but coarse edges as sharp as the peers': one smooth tile, not a blur
    smooth = row("train/cat/smooth.jpg", rng, fine_sharpness=0.15, sharpness=0.60)
    assert run("blurry", context(frame(rows(40) + [smooth]))) == []


def test_blurry_compares_an_image_with_its_class():
    # cats are sharp, dogs soft (by nature); a cat as soft as the dogs is blurred, no dog is
    cats = rows(20, 1, labels=("cat",))
    dogs = rows(20, 2, labels=("dog",))
    rng = np.random.default_rng(3)
    for r in cats:
        r["sharpness"], r["fine_sharpness"] = rng.uniform(0.75, 0.85), rng.uniform(0.60, 0.68)
    for r in dogs:
        r["sharpness"], r["fine_sharpness"] = rng.uniform(0.32, 0.38), rng.uniform(0.22, 0.28)
    soft_cat = row("train/cat/soft.jpg", rng, label="cat", sharpness=0.35, fine_sharpness=0.25)
    found = run("blurry", context(frame(cats + dogs + [soft_cat])))
    assert flagged(found) == {"train/cat/soft.jpg"}
    # the same rows unlabeled: the soft image is like half the dataset, not blurred
    unlabeled = frame([{**r, "label": None} for r in cats + dogs + [soft_cat]])
    assert run("blurry", context(unlabeled)) == []


def test_blurry_without_enough_images_uses_the_absolute_floor_only():
    rng = np.random.default_rng(4)
    records = rows(10) + [
        row("train/cat/softer.jpg", rng, fine_sharpness=0.2, sharpness=0.3),  # relative only: not judged
        row("train/cat/smeared.jpg", rng, fine_sharpness=0.05, sharpness=0.08),  # below always_below (0.12)
    ]
    assert len(records) < RULES.settings["min_images_for_relative"]
    assert flagged(run("blurry", context(frame(records)))) == {"train/cat/smeared.jpg"}


def test_blurry_soft_dataset_is_one_dataset_level_finding():
    records = rows(30, sharpness=0.2, fine_sharpness=0.1)  # upscaled data: uniformly soft
    rng = np.random.default_rng(5)
    for r in records:
        r["sharpness"], r["fine_sharpness"] = rng.uniform(0.18, 0.22), rng.uniform(0.08, 0.12)
    found = run("blurry", context(frame(records)))
    assert len(found) == 1 and found[0].paths == []
    assert found[0].details["scope"] == "dataset" and found[0].details["fraction"] == 1.0
    assert found[0].details["dataset_median"] == pytest.approx(0.2, abs=0.02)


def test_blurry_does_not_judge_images_without_room_for_edges():
    rng = np.random.default_rng(6)
    tiny = row("train/cat/tiny.png", rng, width=4, height=4, fine_sharpness=0.01, sharpness=0.02)
    assert run("blurry", context(frame(rows(30) + [tiny]))) == []


def test_noisy_flags_a_noisy_image_and_needs_peers_for_moderate_noise():
    rng = np.random.default_rng(8)
    very = row("train/cat/very_noisy.jpg", rng, noise_sigma=40.0)  # above always_above (18)
    some = row("train/dog/noisy.jpg", rng, label="dog", noise_sigma=12.0)  # far above its peers' ~3
    found = run("noisy", context(frame(rows(40) + [very, some])))
    assert [f.paths[0] for f in found] == ["train/cat/very_noisy.jpg", "train/dog/noisy.jpg"]  # worst first
    assert found[0].score == pytest.approx(40.0)
    # the message names the peers' median it was judged against (the dog class's, ~3)
    assert 1.0 < found[1].details["peer_median"] < 6.0 and "its peers' median" in found[1].message
    # with too few images for a relative judgement only the absolute bound speaks
    few = run("noisy", context(frame(rows(10) + [very, some])))
    assert flagged(few) == {"train/cat/very_noisy.jpg"}
    # too small to tell noise from content (min_side_px 16): not judged
    tiny = row("train/cat/tiny.png", rng, width=12, height=12, noise_sigma=40.0)
    assert run("noisy", context(frame(rows(40) + [tiny]))) == []


def test_noisy_dataset_is_one_dataset_level_finding():
    rng = np.random.default_rng(9)
    records = rows(30)
    for r in records:
        r["noise_sigma"] = rng.uniform(22, 28)
    found = run("noisy", context(frame(records)))
    assert image_findings(found) == []
    (f,) = dataset_findings(found)
    assert f.paths == [] and f.details["fraction"] == 1.0 and f.score == pytest.approx(25, abs=3)


def test_dark_bright_and_low_contrast_flag_their_planted_image():
    rng = np.random.default_rng(10)
    dark = row("train/cat/dark.jpg", rng, brightness_p95=30.0, brightness_p05=2.0, brightness_mean=12.0, contrast=8.0)
    bright = row("train/dog/bright.jpg", rng, label="dog", brightness_p05=240.0, brightness_p95=254.0,
                 brightness_mean=248.0, contrast=6.0)  # fmt: skip
    flat = row("train/cat/flat.jpg", rng, contrast=5.0)
    ctx = context(frame(rows(40) + [dark, bright, flat]))
    assert flagged(run("dark", ctx)) == {"train/cat/dark.jpg"}
    assert flagged(run("bright", ctx)) == {"train/dog/bright.jpg"}
    # every washed-out image: the dark and bright ones have their range squeezed too
    assert flagged(run("low_contrast", ctx)) == {"train/cat/dark.jpg", "train/dog/bright.jpg", "train/cat/flat.jpg"}
    (d,) = run("dark", ctx)
    assert d.details == {"brightness_p95": 30.0, "threshold": params("dark")["max_brightness_p95"]}
    assert 0.8 < d.score < 0.9  # 1 - 30 / ~205


def test_dark_image_keeping_its_contrast_is_not_underexposed():
    # a night scene with a bright window: 95% dark, full range
    rng = np.random.default_rng(11)
    night = row("train/cat/night.jpg", rng, brightness_p95=60.0, brightness_mean=30.0, contrast=50.0)
    assert run("dark", context(frame(rows(40) + [night]))) == []


def test_mostly_dark_dataset_is_dark_by_nature():
    rng = np.random.default_rng(12)
    records = rows(30)
    for r in records:  # fluorescence micrographs: dark everywhere, and alike
        r["brightness_p95"], r["contrast"] = rng.uniform(35, 45), rng.uniform(9, 11)
    found = run("dark", context(frame(records)))
    assert image_findings(found) == []
    (f,) = dataset_findings(found)
    assert f.paths == [] and f.details["fraction"] == 1.0 and "100% of the images are dark" in f.message


def test_low_information_blank_images_and_near_binary_datasets():
    rng = np.random.default_rng(13)
    blank = row("train/cat/blank.jpg", rng, contrast=1.0, entropy=0.4)
    poor = row("train/dog/poor.jpg", rng, label="dog", entropy=1.0)  # few grey levels among photos
    found = run("low_information", context(frame(rows(40) + [blank, poor])))
    assert flagged(found) == {"train/cat/blank.jpg", "train/dog/poor.jpg"}
    blank = next(f for f in found if f.paths == ["train/cat/blank.jpg"])
    assert ": blank (luma standard deviation" in blank.message and blank.details["blank"] and blank.score == 1.0
    # ink on paper: every image under the entropy bound; one dataset-level finding, and only
    # the blank page gets one of its own
    digits = rows(40)
    for r in digits:
        r["entropy"], r["contrast"] = rng.uniform(0.7, 1.3), rng.uniform(80, 100)
    empty_page = row("train/cat/empty_page.png", rng, contrast=0.5, entropy=0.05)
    found = run("low_information", context(frame(digits + [empty_page])))
    assert flagged(image_findings(found)) == {"train/cat/empty_page.png"}
    (f,) = dataset_findings(found)
    assert f.paths == [] and f.details["fraction"] == 1.0
    # ... also where there are too few images to compare with peers: the share decides
    found = run("low_information", context(frame(digits[:10] + [empty_page])))
    assert flagged(found) == {"train/cat/empty_page.png"} and len(dataset_findings(found)) == 1


def test_grayscale_flags_the_minority_colour_mode():
    records = rows(40)
    gray = [records[i]["path"] for i in (3, 17, 29)]
    for r in records:
        if r["path"] in gray:
            r["channel_spread"], r["mode"] = 1.0, "L"
    found = run("grayscale", context(frame(records)))
    assert flagged(found) == set(gray)
    assert all(f.details["is_grayscale"] is True and f.details["mode"] == "L" for f in found)
    # mostly grayscale: the colour images are the odd ones
    for r in records:
        r["channel_spread"] = 60.0 if r["path"] in gray else 1.0
    found = run("grayscale", context(frame(records)))
    assert flagged(found) == set(gray) and all(f.details["is_grayscale"] is False for f in found)
    # half and half is no minority: nothing to say
    for i, r in enumerate(records):
        r["channel_spread"] = 1.0 if i % 2 else 60.0
    assert run("grayscale", context(frame(records))) == []


def test_low_resolution_relative_and_floor():
    rng = np.random.default_rng(14)
    thumb = row("train/cat/thumb.jpg", rng, width=160, height=120)  # 4x smaller than the rest
    found = run("low_resolution", context(frame(rows(40) + [thumb])))
    assert [f.paths for f in found] == [["train/cat/thumb.jpg"]]
    assert found[0].score == pytest.approx(4.0) and found[0].details["dataset_median_side"] == 480
    # too few images to say what is typical: only the floor (min_side_px 32, and 1.5x smaller) counts
    icon = row("train/cat/icon.png", rng, width=20, height=20)
    found = run("low_resolution", context(frame(rows(10) + [thumb, icon])))
    assert flagged(found) == {"train/cat/icon.png"}


def test_low_resolution_small_dataset_is_one_dataset_level_finding():
    rng = np.random.default_rng(16)
    half = row("train/cat/half.png", rng, width=14, height=14)  # under the floor, but so is everything
    speck = row("train/cat/speck.png", rng, width=8, height=8)  # 3.5x smaller than the 28-px rest
    found = run("low_resolution", context(frame(rows(30, width=28, height=28) + [half, speck])))
    assert flagged(image_findings(found)) == {"train/cat/speck.png"}
    (f,) = dataset_findings(found)
    assert f.paths == [] and f.details["dataset_median_side"] == 28
    assert f.details["upsampling_to_224"] == pytest.approx(8.0) and f.details["fraction"] == 1.0


def test_odd_size_and_aspect_ratio():
    rng = np.random.default_rng(15)
    huge = row("train/cat/huge.jpg", rng, width=3000, height=2250)
    strip = row("train/dog/strip.jpg", rng, label="dog", width=1600, height=400)
    ctx = context(frame(rows(40) + [huge, strip]))
    found = run("odd_size", ctx)
    assert [f.paths for f in found] == [["train/cat/huge.jpg"]]
    assert found[0].score == pytest.approx(3000 / 640)
    found = run("odd_aspect_ratio", ctx)
    assert [f.paths for f in found] == [["train/dog/strip.jpg"]]
    assert found[0].score == pytest.approx(4.0)  # the elongation (3x off the dataset's 4:3 too)
    # odd_size is a relative judgement only
    assert run("odd_size", context(frame(rows(10) + [huge]))) == []
    # most of the dataset elongated (slices of a volume): said once, and the odd one out still named
    slices = [row(f"train/cat/s{i}.png", rng, width=256, height=60 + i % 5) for i in range(40)]
    square = row("train/cat/square.png", rng, width=256, height=256)
    found = run("odd_aspect_ratio", context(frame(slices + [square])))
    assert image_findings(found) and [f.paths for f in image_findings(found)] == [["train/cat/square.png"]]
    (whole,) = dataset_findings(found)
    assert whole.details["fraction"] == pytest.approx(40 / 41)


def test_quality_checks_ignore_rows_that_did_not_decode():
    records = rows(30) + [broken("train/cat/cut.jpg", "truncated", "truncated")]
    ctx = context(frame(records))
    for name in ("blurry", "noisy", "dark", "bright", "low_contrast", "low_information", "grayscale",
                 "low_resolution", "odd_size", "odd_aspect_ratio"):  # fmt: skip
        assert run(name, ctx) == [], name


# --- duplicates and leakage ----------------------------------------------------------------


def _picture(rng: np.random.Generator, side: int = 64) -> np.ndarray:
    """A smooth random colour picture (a 6x6 field upsampled): distinct pictures have pHashes
    ~26 bits apart and differ by ~2 in verify's units."""
    small = rng.uniform(0, 255, (6, 6, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((side, side), Image.Resampling.BICUBIC))


def _jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _reencoded(rgb: np.ndarray) -> np.ndarray:
    """A near copy: resized to 7/8 and saved as JPEG quality 40."""
    h, w = rgb.shape[:2]
    small = np.asarray(Image.fromarray(rgb).resize((w * 7 // 8, h * 7 // 8), Image.Resampling.BILINEAR))
    return np.asarray(Image.open(io.BytesIO(_jpeg(small, 40))).convert("RGB"))


class Pictures:
    """Rows of real small pictures: pixel hash, perceptual hashes and a stored thumbnail each."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.thumbs: dict[str, bytes] = {}
        self.records: list[dict] = []

    def add(self, path: str, rgb: np.ndarray, *, split="train", label="cat", **values) -> dict:
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        chash = _hex("file:" + path)
        self.thumbs[chash] = _jpeg(rgb)
        r = row(path, self.rng, split=split, label=label, content_hash=chash, pixel_hash=pixel_hash(rgb),
                width=rgb.shape[1], height=rgb.shape[0], **perceptual_hashes(gray))  # fmt: skip
        r.update(values)
        self.records.append(r)
        return r

    def distinct(self, n: int, *, split="train", labels=("cat", "dog")) -> list[np.ndarray]:
        out = []
        for i in range(n):
            rgb = _picture(self.rng)
            label = labels[i % len(labels)] if labels else None
            self.add(f"{split}/{label or 'images'}/{i:03d}.png", rgb, split=split, label=label)
            out.append(rgb)
        return out

    def thumbnails(self, hashes) -> dict[str, bytes]:
        return {h: self.thumbs[h] for h in hashes if h in self.thumbs}

    def context(self, thumbnails: bool = True, **kw) -> CheckContext:
        return context(frame(self.records), thumbnails=self.thumbnails if thumbnails else None, **kw)


def test_exact_duplicates_within_a_split_and_leakage_across():
    t = rows(30, labels=("cat", "dog"))
    t[1]["pixel_hash"] = t[5]["pixel_hash"] = t[9]["pixel_hash"] = "same-pixels"  # three copies in train
    t.append(row("val/cat/copy.jpg", np.random.default_rng(1), split="val", pixel_hash="same-pixels"))
    t.append(row("val/cat/other.jpg", np.random.default_rng(2), split="val"))
    t[2]["pixel_hash"] = t[-1]["pixel_hash"] = "copied-into-val"  # one copy in train, one in val
    ctx = context(frame(t))
    found = run("exact_duplicate", ctx)
    assert [f.paths for f in found] == [[t[1]["path"], t[5]["path"], t[9]["path"]]]
    assert found[0].details["split"] == "train" and found[0].details["labels"] == ["dog"]
    leaks = run("leakage", ctx)
    assert sorted(f.paths for f in leaks) == sorted([
        [t[1]["path"], t[5]["path"], t[9]["path"], "val/cat/copy.jpg"],  # train first, then val
        [t[2]["path"], "val/cat/other.jpg"],
    ])  # fmt: skip
    assert all(f.details["identical"] and f.score == 1.0 and f.details["splits"] == ["train", "val"] for f in leaks)
    # no hash candidates and no embeddings: nothing more to verify, nothing to note
    assert "near_duplicate" not in ctx.notes


def test_identical_copies_in_other_splits_are_not_exact_duplicates():
    t = rows(20)
    t.append(row("val/cat/copy.jpg", np.random.default_rng(1), split="val", pixel_hash=t[0]["pixel_hash"]))
    assert run("exact_duplicate", context(frame(t))) == []


def test_leakage_needs_two_splits():
    t = rows(20)
    t[0]["pixel_hash"] = t[1]["pixel_hash"]
    ctx = context(frame(t))
    assert run("leakage", ctx) == []
    assert ctx.skipped["leakage"] == "the dataset has fewer than two splits"


def test_near_duplicate_found_by_hash_and_verified_on_pixels():
    pics = Pictures(0)
    imgs = pics.distinct(30)
    pics.add("train/cat/copy_of_000.jpg", _reencoded(imgs[0]))
    # a distinct picture whose hashes happen to equal another's: a candidate, not a copy
    impostor = pics.add("train/dog/impostor.png", _picture(pics.rng), label="dog")
    original = pics.records[5]
    impostor.update(phash=original["phash"], dhash=original["dhash"], phash_mirror=original["phash_mirror"])
    ctx = pics.context()
    found = run("near_duplicate", ctx)
    assert [f.paths for f in found] == [["train/cat/000.png", "train/cat/copy_of_000.jpg"]]
    f = found[0]
    assert (
        f.details["evidence"] == "phash"
        and f.details["min_phash_distance"] <= params("near_duplicate")["max_phash_distance"]
    )
    assert 0 < f.details["pixel_difference"] < params("near_duplicate")["max_pixel_difference"]
    assert f.score == pytest.approx(1 - f.details["min_phash_distance"] / 64)
    assert "near_duplicate" not in ctx.notes
    # without thumbnails the hash candidates stand unverified, and the context says so
    ctx = pics.context(thumbnails=False)
    found = run("near_duplicate", ctx)
    assert flagged(found) == {"train/cat/000.png", "train/cat/copy_of_000.jpg", original["path"],
                              "train/dog/impostor.png"}  # fmt: skip
    assert all(f.details["pixel_difference"] is None for f in found)
    assert "not verified" in ctx.notes["near_duplicate"]


def test_near_duplicate_ignores_groups_of_identical_copies_only():
    pics = Pictures(1)
    imgs = pics.distinct(25)
    pics.add("train/cat/same_as_003.bmp", imgs[3])  # identical pixels: exact_duplicate's
    ctx = pics.context()
    assert run("near_duplicate", ctx) == []
    assert flagged(run("exact_duplicate", ctx)) == {"train/dog/003.png", "train/cat/same_as_003.bmp"}


def test_near_copy_across_splits_is_leakage_not_a_duplicate():
    pics = Pictures(2)
    imgs = pics.distinct(25)
    pics.distinct(10, split="val")
    pics.add("val/cat/copy_of_004.jpg", _reencoded(imgs[4]), split="val")
    ctx = pics.context()
    assert run("near_duplicate", ctx) == []
    (leak,) = run("leakage", ctx)
    assert leak.paths == ["train/cat/004.png", "val/cat/copy_of_004.jpg"]
    assert leak.details["identical"] is False and leak.details["evidence"] == "phash"
    assert leak.details["splits"] == ["train", "val"]


def test_near_duplicate_found_through_embeddings():
    pics = Pictures(3)
    imgs = pics.distinct(30)
    copy = pics.add("train/cat/copy_of_002.jpg", _reencoded(imgs[2]))
    copy["dhash"] ^= (1 << 40) - 1  # the hash route rejects it (dHash 40 bits off)
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(len(pics.records), 32)).astype(np.float32)
    vectors[-1] = vectors[2] + 0.05 * rng.normal(size=32)  # the backbone sees one picture
    emb = Embeddings(backbone={"id": "fake"}, hashes=[r["content_hash"] for r in pics.records], vectors=vectors)
    # without embeddings the copy goes unseen
    assert run("near_duplicate", pics.context()) == []
    found = run("near_duplicate", pics.context(embeddings=emb))
    assert [f.paths for f in found] == [["train/cat/002.png", "train/cat/copy_of_002.jpg"]]
    assert found[0].details["evidence"] == "embedding"
    assert found[0].score == pytest.approx(found[0].details["embedding_similarity"]) and found[0].score > 0.99


def _far_neighbour(pics: Pictures, of: int, path: str, rgb: np.ndarray, label: str = "cat") -> tuple[dict, np.ndarray]:
    """Add ``rgb`` at ``path``, far in pHash from everything (mirrored or not), and random unit
    embeddings in which it is image ``of``'s nearest neighbour at cosine 0.75: below
    min_embedding_similarity. Returns its row and the vectors."""
    added = pics.add(path, rgb, label=label)
    added["phash"] ^= (1 << 40) - 1
    added["phash_mirror"] ^= (1 << 40) - 1
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(len(pics.records), 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noise = rng.normal(size=32)
    noise -= (noise @ vectors[of]) * vectors[of]
    vectors[-1] = 0.75 * vectors[of] + np.sqrt(1 - 0.75**2) * noise / np.linalg.norm(noise)
    return added, vectors


def test_crop_found_among_the_nearest_neighbours_below_the_similarity_threshold():
    """An 80%-area crop of a small image sits far in pHash and below min_embedding_similarity,
    yet is its original's nearest backbone neighbour: with crop_neighbours (default 5) the
    nearest are candidates too, and pass only if the template search finds one inside the
    other, at one place."""
    from auditor.demo.synth import crop_area

    pics = Pictures(5)
    imgs = pics.distinct(30)
    _, vectors = _far_neighbour(pics, 2, "train/cat/crop_of_002.png", crop_area(imgs[2], 0.8))
    emb = _embeddings(pics.records, vectors)
    assert params("near_duplicate")["min_embedding_similarity"] > 0.75
    assert params("near_duplicate")["crop_neighbours"] == 5
    found = run("near_duplicate", pics.context(embeddings=emb))
    assert [f.paths for f in found] == [["train/cat/002.png", "train/cat/crop_of_002.png"]]
    # found as a neighbour, not by its similarity, and said so: "embedding" would claim the limit was met
    assert found[0].details["evidence"] == "neighbour" and found[0].details["embedding_similarity"] == pytest.approx(
        0.75, abs=1e-3)  # fmt: skip
    assert "nearest backbone neighbours at similarity 0.750" in found[0].message
    # without the nearest-neighbour candidates it goes unseen; distinct neighbours never pass
    assert run("near_duplicate", pics.context(embeddings=emb), crop_neighbours=0) == []


def test_a_nearest_neighbour_alone_links_two_labels_never():
    """crop_neighbours makes an image's nearest backbone neighbours candidates whatever their
    similarity or pHash. Such a pair joins two images under one label (a JPEG copy of a 28-px
    digit in val), but never two labels: the hashes and the backbone both called it two
    pictures (a sans-serif I and l match as they stand), so no label_conflict rests on it."""

    def pictures(label: str) -> tuple[Pictures, np.ndarray]:
        pics = Pictures(5)
        imgs = pics.distinct(30)
        twin, vectors = _far_neighbour(pics, 2, f"train/{label}/twin_of_002.png", imgs[2], label)  # same pixels
        twin["pixel_hash"] = "other"
        return pics, vectors

    pics, vectors = pictures("cat")  # 002.png is a cat
    found = run("near_duplicate", pics.context(embeddings=_embeddings(pics.records, vectors)))
    assert [f.paths for f in found] == [["train/cat/002.png", "train/cat/twin_of_002.png"]]
    pics, vectors = pictures("dog")
    ctx = pics.context(embeddings=_embeddings(pics.records, vectors))
    assert run("near_duplicate", ctx) == [] and run("label_conflict", ctx) == []
    # the same pair as an embedding candidate (similar enough) is a label conflict
    vectors[-1] = vectors[2]
    ctx = pics.context(embeddings=_embeddings(pics.records, vectors))
    found = run("label_conflict", ctx, max_mirror_phash_distance=64)
    assert [sorted(f.paths) for f in found] == [["train/cat/002.png", "train/dog/twin_of_002.png"]]


# --- labels --------------------------------------------------------------------------------


def test_label_checks_skip_unlabeled_data_and_say_why():
    ctx = context(frame(rows(30, labels=None)))
    for name in ("label_conflict", "label_issue", "class_name_inconsistency", "class_imbalance", "unseen_class"):
        assert run(name, ctx) == [], name
        assert ctx.skipped[name].startswith(UNLABELED), name


def test_label_conflict_identical_and_near_copies_with_two_labels():
    pics = Pictures(4)
    imgs = pics.distinct(30)
    pics.add("train/dog/same_as_000.png", imgs[0], label="dog")  # 000 is a cat
    pics.add("val/dog/copy_of_002.jpg", _reencoded(imgs[2]), split="val", label="dog")  # 002 is a cat too
    pics.add("train/cat/copy_of_004.jpg", _reencoded(imgs[4]), label="cat")  # same label: no conflict
    found = run("label_conflict", pics.context())
    by_first = {tuple(f.paths): f for f in found}
    assert set(by_first) == {
        ("train/cat/000.png", "train/dog/same_as_000.png"),  # sorted by label, then split, then path
        ("train/cat/002.png", "val/dog/copy_of_002.jpg"),
    }
    same = by_first[("train/cat/000.png", "train/dog/same_as_000.png")]
    near = by_first[("train/cat/002.png", "val/dog/copy_of_002.jpg")]
    assert same.details["identical"] is True and same.score == 1.0 and same.details["labels"] == ["cat", "dog"]
    assert near.details["identical"] is False and near.details["evidence"] == "phash"
    assert near.details["splits"] == ["train", "val"]
    assert found[0] is same  # strongest first


def _clusters(n_per: int, classes: tuple[str, ...], seed: int = 0, dims: int = 16) -> tuple[list[dict], np.ndarray]:
    """Rows of ``classes`` with embeddings in one well-separated cluster per class."""
    rng = np.random.default_rng(seed)
    centers = np.eye(dims)[: len(classes)] * 4.0
    records, vectors = [], []
    for c, name in enumerate(classes):
        for i in range(n_per):
            records.append(row(f"train/{name}/{i:03d}.jpg", rng, label=name))
            vectors.append(centers[c] + rng.normal(scale=0.5, size=dims))
    return records, np.asarray(vectors, np.float32)


def _embeddings(records: list[dict], vectors: np.ndarray, **kw) -> Embeddings:
    return Embeddings(backbone={"id": "fake"}, hashes=[r["content_hash"] for r in records], vectors=vectors, **kw)


def test_label_issue_finds_the_mislabelled_image():
    # the given label's probability must fall below max_label_quality (0.05): the regularised
    # classifier and the neighbour vote's pseudo-count need a few classes of 50 to get there
    # (two classes of 20 leave an obvious mislabel at ~0.15)
    records, vectors = _clusters(50, ("bird", "cat", "dog", "fox", "owl"), dims=8)
    records[55]["label"] = "bird"  # a cat (cluster 1) filed as a bird
    records[55]["path"] = "train/bird/really_a_cat.jpg"
    ctx = context(frame(records), embeddings=_embeddings(records, vectors))
    found = run("label_issue", ctx)
    assert [f.paths for f in found] == [["train/bird/really_a_cat.jpg"]]
    d = found[0].details
    assert d["given_label"] == "bird" and d["suggested_label"] == "cat"
    assert d["label_quality"] < params("label_issue")["max_label_quality"]
    assert found[0].score == pytest.approx(1 - d["label_quality"])
    assert "label_issue" not in ctx.skipped


def test_label_issue_needs_the_given_label_improbable():
    records, vectors = _clusters(20, ("cat", "dog"), dims=8)
    records[25]["label"] = "cat"  # a dog filed as a cat
    records[25]["path"] = "train/cat/really_a_dog.jpg"
    # two classes of 20: confident learning names it, but its given label keeps p ~0.15
    ctx = context(frame(records), embeddings=_embeddings(records, vectors))
    assert run("label_issue", ctx) == [] and "label_issue" not in ctx.skipped
    found = run("label_issue", ctx, max_label_quality=0.5)
    assert [f.paths for f in found] == [["train/cat/really_a_dog.jpg"]]
    assert found[0].details["suggested_label"] == "dog"
    assert params("label_issue")["max_label_quality"] <= found[0].details["label_quality"] < 0.5
    # filter_by other than none: cleanlab's filter must name it too (it does here)
    assert run("label_issue", ctx, max_label_quality=0.5, filter_by="both") == found


def test_label_issue_reads_the_middle_blocks_statistics_where_the_backbone_records_them():
    """features: depths. The embeddings cannot tell the classes apart here (noise); the middle
    layers' BatchNorm statistics can, so the mislabelled image is found from them, and only
    with them (features: embedding, or a backbone that records no statistics, finds nothing)."""
    classes = ("bird", "cat", "dog", "fox", "owl")
    records, clustered = _clusters(50, classes, dims=8)
    records[55]["label"] = "bird"  # a cat filed as a bird
    records[55]["path"] = "train/bird/really_a_cat.jpg"
    rng = np.random.default_rng(1)
    noise = rng.normal(size=(len(records), 8)).astype(np.float32)
    layers = [("stem_bn", 16), ("block5_project_bn", 80), ("head_bn", 32)]
    total = sum(c for _, c in layers)
    stats = rng.normal(size=(len(records), 2 * total)).astype(np.float32)
    stats[:, 16:96] = np.tile(clustered, 10)  # the means of the middle layer carry the classes
    with_stats = _embeddings(records, noise, bn_stats=stats, stat_layers=layers)

    def flagged(embeddings, **override):  # the regression alone (no neighbour vote on the noise)
        return run("label_issue", context(frame(records), embeddings=embeddings), neighbour_weight=0.0, **override)

    found = flagged(with_stats)
    assert [f.paths for f in found] == [["train/bird/really_a_cat.jpg"]]
    assert found[0].details["suggested_label"] == "cat"
    assert flagged(with_stats, features="embedding") == []
    assert flagged(_embeddings(records, noise)) == []


def test_label_issue_skips_without_embeddings_or_classes_and_notes_small_classes():
    records, vectors = _clusters(20, ("cat", "dog"))
    ctx = context(frame(records))
    assert run("label_issue", ctx) == [] and ctx.skipped["label_issue"] == NO_EMBEDDINGS
    one = [{**r, "label": "cat"} for r in records]
    ctx = context(frame(one), embeddings=_embeddings(one, vectors))
    assert run("label_issue", ctx) == []
    assert ctx.skipped["label_issue"] == "fewer than 2 classes with at least 5 embedded images"
    # a class of 3 images is left out, and the note says so
    extra, xv = _clusters(3, ("fox",), seed=1)
    both = records + extra
    ctx = context(frame(both), embeddings=_embeddings(both, np.concatenate([vectors, xv])))
    assert run("label_issue", ctx) == []
    assert "fox" in ctx.notes["label_issue"]


def test_class_name_inconsistency_merges_spellings_not_glyphs():
    records = (
        rows(12, labels=("cat",)) + rows(3, 1, labels=("Cats",)) + rows(8, 2, labels=("golden_retriever",))
        + rows(2, 3, labels=("golden-retreiver",)) + rows(5, 4, labels=("a",)) + rows(5, 5, labels=("A",))
        + rows(5, 6, labels=("class1",)) + rows(5, 7, labels=("class2",))
    )  # fmt: skip
    found = run("class_name_inconsistency", context(frame(records)))
    assert [f.details["suggested_name"] for f in found] == ["cat", "golden_retriever"]
    cat, dog = found
    assert cat.details["names"] == ["cat", "Cats"] and cat.score == pytest.approx(3 / 15)
    assert flagged([cat]) == {r["path"] for r in records if r["label"] == "Cats"}  # the ones to move
    assert dog.details["names"] == ["golden_retriever", "golden-retreiver"]


def test_class_imbalance_ratio_and_small_classes_are_dataset_level():
    records = rows(44, labels=("cat",)) + rows(4, 1, labels=("dog",)) + rows(6, 2, labels=("cat", "dog"), split="val")
    found = run("class_imbalance", context(frame(records)))
    assert all(f.paths == [] for f in found)  # about classes, not images
    ratio = [f for f in found if "ratio" in f.details]
    small = [f for f in found if "images" in f.details]
    assert len(ratio) == 1 and ratio[0].details["split"] == "train" and ratio[0].score == pytest.approx(11.0)
    assert [(f.details["label"], f.details["images"]) for f in small] == [("dog", 4)]  # train only; val's 3 dogs
    balanced = rows(40, labels=("cat", "dog"))
    assert run("class_imbalance", context(frame(balanced))) == []


def test_unseen_class_both_ways_and_skip_without_train():
    records = rows(20, labels=("cat", "dog")) + rows(6, 1, labels=("cat", "bird"), split="val")
    found = run("unseen_class", context(frame(records)))
    not_in_train = [f for f in found if f.details["kind"] == "not_in_train"]
    not_in_split = [f for f in found if f.details["kind"] == "not_in_split"]
    assert flagged(not_in_train) == {r["path"] for r in records if r["label"] == "bird"}
    assert not_in_train[0].score == pytest.approx(3 / 6)
    assert len(not_in_split) == 1 and not_in_split[0].paths == [] and not_in_split[0].details["labels"] == ["dog"]
    ctx = context(frame(rows(6, labels=("cat", "dog"), split="val") + rows(6, 1, split="test")))
    assert run("unseen_class", ctx) == [] and "no train split" in ctx.skipped["unseen_class"]


# --- embeddings: outlier -------------------------------------------------------------------


def test_outlier_flags_the_image_far_from_everything():
    records, vectors = _clusters(15, ("cat", "dog"))
    rng = np.random.default_rng(1)
    stray = row("train/cat/off_topic.jpg", rng, label="cat")
    far = np.zeros(16, np.float32)
    far[10] = 4.0  # orthogonal to both clusters
    records, vectors = records + [stray], np.vstack([vectors, far])
    ctx = context(frame(records), embeddings=_embeddings(records, vectors))
    found = run("outlier", ctx)
    assert [f.paths for f in found] == [["train/cat/off_topic.jpg"]]
    assert "the rest of the dataset" in found[0].message
    assert found[0].score == pytest.approx(found[0].details["knn_distance"]) and found[0].score > 0.5


def test_outlier_flags_an_image_far_from_its_own_class():
    records, vectors = _clusters(15, ("cat", "dog"))
    rng = np.random.default_rng(2)
    wrong = row("train/cat/looks_like_a_dog.jpg", rng, label="cat")
    v = vectors[20] + 0.1 * rng.normal(size=16).astype(np.float32)  # in the dog cluster
    records, vectors = records + [wrong], np.vstack([vectors, v])
    found = run("outlier", context(frame(records), embeddings=_embeddings(records, vectors)))
    assert [f.paths for f in found] == [["train/cat/looks_like_a_dog.jpg"]]
    assert "its class 'cat'" in found[0].message
    assert found[0].score == pytest.approx(found[0].details["class_knn_distance"])


def test_above_gap_takes_what_stands_apart_and_nothing_from_a_smooth_tail():
    from auditor.checks.embedding import above_gap

    smooth = pd.Series(np.linspace(3.4, -1.0, 45))  # a long tail, steps of 0.1
    assert not above_gap(smooth, 2.5, 0.75).any()
    one = pd.Series([0.1, 2.8, 1.7, 1.6, 0.3, np.nan])  # one value 1.1 above the next
    assert above_gap(one, 2.5, 0.75).tolist() == [False, True, False, False, False, False]
    group = pd.Series([9.0, 8.5, 8.8, 2.9, 2.6, 2.3, 2.0, 1.8])  # a group far beyond a tail
    assert above_gap(group, 2.5, 0.75).tolist() == [True] * 3 + [False] * 5
    assert not above_gap(pd.Series([2.0, 0.0]), 2.5, 0.75).any()  # the gap is below the start


def test_outlier_skips_and_leaves_unembedded_rows_alone():
    records, vectors = _clusters(15, ("cat", "dog"))
    ctx = context(frame(records))
    assert run("outlier", ctx) == [] and ctx.skipped["outlier"] == NO_EMBEDDINGS
    few = records[:10]
    ctx = context(frame(few), embeddings=_embeddings(few, vectors[:10]))
    assert run("outlier", ctx) == [] and ctx.skipped["outlier"].startswith("too few embedded images (10)")
    # a decoded row the backbone failed on has no vector: not an outlier, no crash
    extra = row("train/cat/no_vector.jpg", np.random.default_rng(3))
    ctx = context(frame(records + [extra]), embeddings=_embeddings(records, vectors))
    assert run("outlier", ctx) == [] and "outlier" not in ctx.skipped


# --- boxes ---------------------------------------------------------------------------------


def _box(path: str, cat: str, x: float, y: float, w: float, h: float, ids: Iterator[int], split="train") -> dict:
    """One COCO box (pixels, top-left x, y and size) as read_coco gives it; ``ids`` numbers them."""
    where = f"instances_{split}.json: annotations[{next(ids)}]"
    cid = {"cat": "1", "dog": "2", "bird": "3"}.get(cat, cat)
    return {"box_id": where, "path": path, "split": split, "category": cat, "category_id": cid, "x": x, "y": y,
            "w": w, "h": h, "units": "px", "source": None, "where": where, "crowd": False}  # fmt: skip


def _annotations(boxes: list[dict], images: list[dict], problems=(), categories=None) -> Annotations:
    cats = categories or {"1": "cat", "2": "dog", "3": "bird"}
    img = pd.DataFrame(
        [{"split": "train", "width": 640.0, "height": 480.0, "exists": True, "annotated": True, "background": False,
          "where": f"instances_train.json: images[{k}]", **m} for k, m in enumerate(images)],
        columns=["path", "split", "width", "height", "exists", "annotated", "background", "where"],
    )  # fmt: skip
    return Annotations("coco", ["instances_train.json"], pd.DataFrame(boxes, columns=BOX_COLUMNS), img, cats,
                       list(problems))  # fmt: skip


def test_box_checks_find_each_planted_box_defect():
    rng = np.random.default_rng(0)
    paths = [f"images/{i}.jpg" for i in range(9)]
    records = [row(p, rng, label=None) for p in paths]
    records[6].update(width=480, height=640)  # img6 is turned by EXIF: declared 640x480
    n = count()
    boxes = [
        _box(paths[0], "cat", 100, 100, 200, 150, n),  # clean
        _box(paths[0], "dog", 350, 100, 200, 150, n),  # clean, beside it
        _box(paths[1], "dog", 600, 100, 100, 100, n),  # ends at 700 of 640 px
        _box(paths[2], "cat", 50, 50, 0, 80, n),  # zero width
        _box(paths[3], "dog", 50, 50, 2, 30, n),  # 2 px wide
        _box(paths[4], "cat", 10, 10, 100, 100, n),
        _box(paths[4], "cat", 11, 10, 100, 100, n),  # annotated twice
        _box(paths[5], "cat", 200, 200, 100, 100, n),
        _box(paths[5], "dog", 200, 200, 100, 101, n),  # one object, two classes
        _box(paths[6], "dog", 10, 10, 50, 50, n),
        _box(paths[8], "9", 10, 10, 50, 50, n),  # category 9 not declared
    ]
    images = [{"path": p} for p in paths]
    images[7]["annotated"] = False  # img7 has no boxes
    problems = [
        {"kind": "missing_image", "path": "images/gone.jpg", "where": "instances_train.json: images[9]", "boxes": 1,
         "message": "images/gone.jpg is annotated (1 boxes) but the file does not exist"},
        {"kind": "unknown_category", "path": paths[8], "where": boxes[-1]["where"], "category_id": "9",
         "box_id": boxes[-1]["box_id"], "message": "category 9 is not among the 3 declared categories"},
    ]  # fmt: skip
    ctx = context(frame(records), annotations=_annotations(boxes, images, problems))
    expect = {
        "box_out_of_bounds": {paths[1]}, "box_degenerate": {paths[2]}, "box_tiny": {paths[3]},
        "box_duplicate": {paths[4]}, "box_label_conflict": {paths[5]}, "box_image_size_mismatch": {paths[6]},
        "box_unannotated_image": {paths[7]}, "box_missing_image": {"images/gone.jpg"},
        "box_unknown_category": {paths[8]},
    }  # fmt: skip
    for name, want in expect.items():
        assert flagged(run(name, ctx)) == want, name
    (oob,) = run("box_out_of_bounds", ctx)
    assert oob.score == pytest.approx(60 / 640) and oob.details["boxes"][0]["box"][2] == pytest.approx(700 / 640)
    (tiny,) = run("box_tiny", ctx)
    assert tiny.score == pytest.approx(1 - 2 / params("box_tiny")["min_side_px"])
    (conflict,) = run("box_label_conflict", ctx)
    assert conflict.details["categories"] == ["cat", "dog"] and conflict.score > params("box_label_conflict")["min_iou"]
    (mismatch,) = run("box_image_size_mismatch", ctx)
    assert mismatch.details["rotated"] is True and mismatch.details["actual"] == [480, 640]


def test_box_class_imbalance_counts_declared_classes_without_boxes():
    rng = np.random.default_rng(1)
    paths = [f"images/{i}.jpg" for i in range(32)]
    n = count()
    boxes = [_box(p, "cat", 10, 10, 50, 50, n) for p in paths[:30]] + [_box(p, "dog", 10, 10, 50, 50, n)
                                                                       for p in paths[30:]]  # fmt: skip
    ctx = context(frame([row(p, rng, label=None) for p in paths]),
                  annotations=_annotations(boxes, [{"path": p} for p in paths]))  # fmt: skip
    found = run("box_class_imbalance", ctx)
    assert all(f.paths == [] for f in found)
    (ratio,) = [f for f in found if "boxes_per_class" in f.details]
    assert ratio.score == pytest.approx(15.0) and ratio.details["boxes_per_class"]["bird"] == 0
    assert {f.details["class"]: f.details["boxes"] for f in found if "class" in f.details} == {"dog": 2, "bird": 0}


def test_box_style_shift_finds_padded_val_boxes_only():
    def dataset(scale: float) -> CheckContext:
        rng = np.random.default_rng(2)
        records, boxes, images, n = [], [], [], count()
        for split, s in (("train", 1.0), ("val", scale)):
            for i in range(25):
                p = f"images/{split}/{i}.jpg"
                records.append(row(p, rng, split=split, label=None))
                images.append({"path": p, "split": split})
                w, h = rng.uniform(90, 110) * s, rng.uniform(70, 90) * s
                cx, cy = rng.uniform(250, 390), rng.uniform(190, 290)
                boxes.append(_box(p, "cat", cx - w / 2, cy - h / 2, w, h, n, split=split))
        return context(frame(records), annotations=_annotations(boxes, images))

    found = run("box_style_shift", dataset(1.3))
    assert found and all(f.paths == [] for f in found)
    top = found[0]
    assert top.details["reference"] == "train" and top.details["other"] == "val"
    assert top.details["differences"][0]["property"] == "area"
    assert top.details["differences"][0]["change"] == pytest.approx(0.69, abs=0.15)  # 1.3^2 - 1
    assert run("box_style_shift", dataset(1.0)) == []


def test_box_checks_skip_without_annotations_and_style_shift_without_groups():
    ctx = context(frame(rows(10)))
    for name in (n for n, spec in REGISTRY.items() if spec.family == "boxes"):
        assert run(name, ctx) == [], name
        assert ctx.skipped[name].startswith(NOT_DETECTION), name
    rng = np.random.default_rng(3)
    paths = [f"images/{i}.jpg" for i in range(5)]
    n = count()
    ann = _annotations([_box(p, "cat", 10, 10, 50, 50, n) for p in paths], [{"path": p} for p in paths])
    ctx = context(frame([row(p, rng, label=None) for p in paths]), annotations=ann)
    assert run("box_style_shift", ctx) == []
    assert ctx.skipped["box_style_shift"] == "one split and one annotation source: nothing to compare"


# --- shift (no TensorFlow: hand-made embeddings) --------------------------------------------


def _splits(val_values: dict | None = None, val_labels=("cat", "dog"), n=30) -> list[dict]:
    records = rows(n, 0, labels=("cat", "dog"))
    val = rows(n, 1, labels=val_labels, split="val")
    rng = np.random.default_rng(5)
    for r in val:
        for k, (lo, hi) in (val_values or {}).items():
            r[k] = float(rng.uniform(lo, hi))
    return records + val


def test_property_shift_names_the_property_that_moved():
    found = run("property_shift", context(frame(_splits({"sharpness": (0.27, 0.33)}))))
    assert [f.details["property"] for f in found] == ["sharpness"]
    f = found[0]
    assert f.paths == [] and f.details["reference"] == "train" and f.details["target"] == "val"
    assert f.score == pytest.approx(1.0) and "blurrier" in f.message
    assert run("property_shift", context(frame(_splits()))) == []


def test_label_shift_between_splits():
    found = run("label_shift", context(frame(_splits(val_labels=("cat",) * 9 + ("dog",)))))
    assert len(found) == 1 and found[0].paths == []
    assert found[0].details["target"] == "val" and found[0].score == pytest.approx(0.4)
    assert run("label_shift", context(frame(_splits()))) == []


def test_label_shift_one_sided_classes_count_against_a_source_only():
    train = rows(30, 0, labels=("cat", "dog"))
    val = rows(20, 1, labels=("cat", "dog"), split="val") + rows(1, 2, labels=("bird",), split="val")
    # between splits a class on one side only is unseen_class's finding, not counted twice
    assert run("label_shift", context(frame(train + val))) == []
    assert flagged(run("unseen_class", context(frame(train + val)))) == {val[-1]["path"]}
    source = frame([{**r, "split": None} for r in train])
    dataset = frame([{**r, "split": None} for r in val])
    ctx = context(dataset, reference=source)
    found = run("label_shift", ctx)
    assert len(found) == 1 and found[0].paths == []
    assert found[0].details["only_target"] == ["bird"] and "only in dataset: bird" in found[0].message
    assert found[0].details["reference"] == "source" and found[0].details["target"] == "dataset"
    # with a source the splits are not compared with each other
    assert run("split_shift", ctx) == [] and "compared with --source" in ctx.skipped["split_shift"]


def test_split_shift_on_embeddings_and_its_skip_reasons():
    records = _splits()
    rng = np.random.default_rng(6)
    vectors = rng.normal(size=(len(records), 16)).astype(np.float32)
    same = context(frame(records), embeddings=_embeddings(records, vectors))
    assert run("split_shift", same) == []
    moved = vectors.copy()
    moved[30:, :4] += 2.0  # val sits elsewhere in feature space
    found = run("split_shift", context(frame(records), embeddings=_embeddings(records, moved)))
    assert len(found) == 1 and found[0].paths == []
    d = found[0].details
    assert d["reference"] == "train" and d["target"] == "val"
    assert d["magnitude"] >= params("split_shift")["min_magnitude"] and d["p_value"] < params("split_shift")["alpha"]
    # significant but smaller than min_magnitude: "minor", not a finding
    fresh = context(frame(records), embeddings=_embeddings(records, moved))
    assert run("split_shift", fresh, min_magnitude=min(1.0, d["magnitude"] + 0.01)) == []
    # without embeddings the embedding tests cannot run; without a source, domain_shift cannot
    ctx = context(frame(records))
    assert run("split_shift", ctx) == [] and NO_EMBEDDINGS in ctx.skipped["split_shift"]
    assert run("domain_shift", ctx) == [] and ctx.skipped["domain_shift"] == "no --source given"


def test_pretraining_gap_from_the_imagenet_head_alone():
    records = rows(30)
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(30, 16)).astype(np.float32)
    unsure = np.full((30, 1000), 1 / 1000, np.float32)  # the ImageNet head knows nothing here
    found = run("pretraining_gap", context(frame(records), embeddings=_embeddings(records, vectors, probs=unsure)))
    assert len(found) == 1 and found[0].paths == []
    assert found[0].details["level"] == "far" and found[0].details["head_confidence"] == pytest.approx(0.001)
    confident = np.zeros((30, 1000), np.float32)
    confident[:, 7] = 0.9
    confident[:, 8] = 0.1
    assert run("pretraining_gap", context(frame(records), embeddings=_embeddings(records, vectors,
                                                                                 probs=confident))) == []  # fmt: skip
    ctx = context(frame(records), embeddings=_embeddings(records, vectors))
    assert run("pretraining_gap", ctx) == []
    assert "neither BatchNorm statistics nor ImageNet probabilities" in ctx.skipped["pretraining_gap"]
