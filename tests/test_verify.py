"""Pixel verification of copy candidates (auditor.measure.verify) and the copy checks resting on it."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from auditor.demo import synth
from auditor.demo.validation import make_copy
from auditor.io.dataset import Discovery
from auditor.measure import verify
from auditor.pipeline.api import build_table


def _thumb(rgb: np.ndarray) -> bytes:
    img = Image.fromarray(rgb)
    img.thumbnail((128, 128), Image.Resampling.BILINEAR, reducing_gap=1.0)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=80)
    return buf.getvalue()


def _digits(n: int = 60) -> list[np.ndarray]:
    """Real handwritten digits (scikit-learn), 32 px, dark ink on white."""
    return [synth.digit(i, 32) for i in range(n)]


def _verify(
    originals: list[np.ndarray],
    others: list[np.ndarray],
    aligned: float,
    crop: float,
    sharpness: float = -np.inf,
    refined: float = -np.inf,
) -> np.ndarray:
    return _verify_how(originals, others, aligned, crop, sharpness, refined)[0]


def _verify_how(
    originals: list[np.ndarray],
    others: list[np.ndarray],
    aligned: float,
    crop: float,
    sharpness: float,
    refined: float = -np.inf,
) -> tuple[np.ndarray, np.ndarray]:
    thumbs = {f"a{i}": _thumb(x) for i, x in enumerate(originals)}
    thumbs |= {f"b{i}": _thumb(x) for i, x in enumerate(others)}
    keys = sorted(thumbs)
    pairs = np.array([[keys.index(f"a{i}"), keys.index(f"b{i}")] for i in range(len(originals))])
    ok, _, how = verify.verify_pairs(
        lambda hs: {h: thumbs[h] for h in hs}, keys, pairs, aligned, crop, None, sharpness, refined
    )
    return ok, how


def _default_params() -> dict:
    from auditor.policy.rules import load_rules

    return load_rules("default").checks["near_duplicate"].params


def _default_crop_sharpness() -> float:
    from auditor.policy.rules import load_rules

    return load_rules("default").checks["near_duplicate"].params["min_crop_sharpness"]


def test_reencoded_and_mirrored_copies_verify_and_distinct_similar_digits_do_not():
    digits = _digits(80)
    copies = []
    for i, d in enumerate(digits[:40]):
        data, _ = make_copy("near_duplicate" if i % 2 else "mirror_copy", 1 + i % 2, d, synth.png_bytes(d))
        copies.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((32, 32))))
    assert _verify(digits[:40], copies, 0.25, 0.0).all()
    # the closest *other* digit of the same class, by correlation: distinct, yet alike
    sig, _ = verify.signatures({str(i): _thumb(d) for i, d in enumerate(digits)}, [str(i) for i in range(80)])
    flat = sig.reshape(80, -1)
    corr = flat @ flat.T
    np.fill_diagonal(corr, -2)
    nearest = [digits[j] for j in corr[:40].argmax(axis=1)]
    assert corr[:40].max(axis=1).mean() > 0.9  # a global correlation calls them alike ...
    assert not _verify(digits[:40], nearest, 0.25, 0.0).any()  # ... the worst block does not


def test_crops_verify_by_template_search():
    photos = [t for _, t in synth.photo_tiles(96, (1.0,), synth.COLOR_PHOTOS, min_std=20, min_entropy=5)][:12]
    crops = [synth.crop_area(p, 0.8) for p in photos]
    assert not _verify(photos, crops, 0.3, 0.0).any()  # not as an aligned copy
    assert _verify(photos, crops, 0.3, 0.35, _default_crop_sharpness()).mean() >= 0.8  # the goal for 80%-area crops


def test_crops_of_small_digits_verify_once_refined_and_their_nearest_distinct_digits_do_not():
    """80%-area crops of 28-px MNIST digits, resized back and saved as JPEG as validate.py makes
    them: on the template search's whole-pixel grid a thin-stroked crop differs from its
    original as much as a distinct digit does; refined to a fraction of a pixel it fits, and
    the nearest distinct digit of each still does not."""
    import sys
    from pathlib import Path

    from auditor.demo.validation import _reencode
    from auditor.measure.hashing import perceptual_hashes
    from auditor.policy.rules import load_rules

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from domains import DOMAINS

    digits = [np.repeat(img[..., None], 3, axis=2) for _, img in DOMAINS["digits"](80, seed=5)]
    n = len(digits)
    crops = [np.asarray(Image.open(io.BytesIO(_reencode(synth.crop_area(d, 0.8), 90, 1.0))).convert("RGB"))
             for d in digits[:30]]  # fmt: skip
    thumbs = {str(i): _thumb(d) for i, d in enumerate(digits)}
    sig, _ = verify.signatures(thumbs, list(thumbs))
    flat = sig.reshape(n, -1)
    corr = flat @ flat.T
    np.fill_diagonal(corr, -2)
    nearest = [digits[j] for j in corr[:30].argmax(axis=1)]
    # the default crop limit: max_relative_crop_difference x these digits' typical difference
    ph = np.array([perceptual_hashes(d[..., 0])["phash"] for d in digits], np.uint64)
    typical = verify.typical_difference(lambda hs: {h: thumbs[h] for h in hs}, list(thumbs), ph, np.arange(n))
    params = load_rules("default").checks["near_duplicate"].params
    limit = params["max_relative_crop_difference"] * typical
    refined = params["max_relative_refined_crop_difference"] * typical
    assert 0.1 < limit < 0.35 and 0.05 < refined < limit
    sharp = params["min_crop_sharpness"]
    # at the refined limit, the template search's grid alone finds few crops; refined, nearly all
    assert _verify(digits[:30], crops, 0.0, refined, sharp).mean() <= 0.3
    assert _verify(digits[:30], crops, 0.0, -np.inf, sharp, refined).mean() >= 0.8  # the goal for crops
    assert _verify(digits[:30], crops, 0.0, limit, sharp, refined).mean() >= 0.9
    assert not _verify(digits[:30], nearest, 0.0, limit, sharp, refined).any()


def test_near_featureless_tiles_are_not_crops_of_each_other():
    """Neighbouring tiles of a smooth gradient (real photos blurred until nearly featureless,
    like a dark micrograph or an even sky) fit into each other's windows about equally well
    wherever the window sits: the template search finds a small difference, but the best
    window does not stand out from windows 2 px beside it (the peak sharpness), so the match is
    no evidence of a crop."""
    import skimage.data
    from PIL import ImageFilter

    tiles = []
    for name, side in (("rocket", 48), ("rocket", 64), ("camera", 48)):
        img = getattr(skimage.data, name)()
        img = np.stack([img] * 3, axis=-1) if img.ndim == 2 else img
        blur = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(25)))
        h, w = blur.shape[:2]
        cut = range(0, w - side, side)
        tiles += [[blur[y : y + side, x : x + side] for x in cut] for y in range(0, h - side, side)]
    a = [row[i] for row in tiles for i in range(0, len(row) - 1)]
    b = [row[i + 1] for row in tiles for i in range(0, len(row) - 1)]
    ok, how = _verify_how(a, b, 0.0, 0.35, -np.inf)  # crops only, any sharpness
    assert (ok & (how == verify.CROP)).sum() >= 2  # the template search alone calls some crops
    ok, how = _verify_how(a, b, 0.0, 0.35, _default_crop_sharpness())
    assert not ok.any()


def test_framed_flat_patches_of_other_gray_levels_are_not_copies():
    """LFW's non-face patches (scikit-image): a flat area framed by a dark border. Normalised
    for brightness and contrast, any two look alike (as crops too); their contrasts are 1.6-2.7x
    apart, which no re-encoded, resized or jittered copy is. A brightness-jittered copy still is."""
    import skimage.data
    from PIL import ImageEnhance

    patches = np.load(Path(skimage.data.__file__).parent / "lfw_subset.npy")
    rgb = {i: np.repeat((patches[i] * 255).round().astype(np.uint8)[..., None], 3, axis=2) for i in (100, 158, 170)}
    params = _default_params()
    pairs = [(100, 158), (158, 170), (100, 170)]
    limits = [params[k] for k in ("max_pixel_difference", "max_crop_difference", "min_crop_sharpness",
                                   "max_refined_crop_difference")]  # fmt: skip
    found = _verify([rgb[i] for i, _ in pairs], [rgb[j] for _, j in pairs], *limits)
    assert not found.any()
    jittered = np.asarray(ImageEnhance.Brightness(Image.fromarray(rgb[158])).enhance(1.15))
    assert _verify([rgb[158]], [jittered], params["max_pixel_difference"], params["max_crop_difference"]).all()


def test_near_copies_are_grouped_around_an_image_they_all_copy_not_chained(tmp_path):
    """41 blends from one real photo into another, 2.5% apart, each a near copy of the next (as
    adjacent slices of a volume are). Connected components chained blends 15% apart into one
    group (04 to 10 here, and whole MRI volumes in a user's trial); grouped around a centre that
    every member copies, no group spans more than 10%."""
    import skimage.data

    from auditor.pipeline.api import scan

    a = np.asarray(Image.fromarray(skimage.data.astronaut()).resize((96, 96)), np.float64)
    b = np.asarray(Image.fromarray(skimage.data.coffee()).resize((96, 96)), np.float64)
    for k in range(41):
        blend = ((1 - k / 40) * a + (k / 40) * b).round().astype(np.uint8)
        synth.write(tmp_path / "ds" / f"{k:02d}.png", synth.png_bytes(blend))
    report = scan(tmp_path / "ds", write=False, embed=False).report
    groups = [sorted(int(p[:2]) for p in f["paths"]) for f in report["findings"] if f["check"] == "near_duplicate"]
    assert len(groups) >= 5  # neighbours in the chain are copies ...
    assert max(g[-1] - g[0] for g in groups) <= 4, groups  # ... blends far apart are not


def test_flat_images_are_never_verified():
    flat = [np.full((40, 40, 3), v, np.uint8) for v in (10, 10, 200)]
    assert not _verify(flat[:2], flat[1:], 10.0, 10.0).any()


def test_images_of_a_few_pixels_are_never_verified():
    """A real 2 and a real 7 shrunk to 2x2 pixels are alike blobs once blown up: too little
    to tell one picture from another, so never a copy (only identical pixels are)."""
    tiny = [synth.downscale(synth.digit(i, 8), 4) for i in (2, 7, 12, 17)]  # classes 2, 7, 2, 7
    assert tiny[0].shape[:2] == (2, 2)
    assert not _verify(tiny[:2], tiny[2:], 10.0, 10.0).any()
    assert not _verify(tiny[:2], tiny[:2], 10.0, 10.0).any()


def test_hash_columns_keep_all_64_bits_next_to_an_unreadable_file():
    big = (1 << 64) - 3  # a float64 column would round this to 2**64
    items = pd.DataFrame({"path": ["a.png", "b.png"], "abs_path": ["/x/a.png", "/x/b.png"], "split": [None, None],
                          "label": [None, None], "ext": [".png", ".png"]})  # fmt: skip
    measured = {"/x/a.png": ("h", {"phash": big, "dhash": big - 1, "phash_mirror": 5, "width": 4}),
                "/x/b.png": (None, {"error_kind": "corrupt", "error": "truncated"})}  # fmt: skip
    table = build_table(Discovery(root=None, layout="flat", items=items), measured)
    assert table["phash"].iloc[0] == big and table["dhash"].iloc[0] == big - 1
    assert table["phash"].iloc[1] is None


def test_copies_are_found_when_most_images_have_one(tmp_path):
    """The yardstick is the 5th nearest other picture: a dataset where every image has a
    re-encoded copy must not make copies look like the typical distinct pair."""
    from auditor.pipeline.api import scan

    tiles = [t for _, t in synth.photo_tiles(96, (1.0,), synth.COLOR_PHOTOS, min_std=20, min_entropy=5)][:30]
    for i, px in enumerate(tiles):
        synth.write(tmp_path / "ds" / f"{i:02d}.jpg", synth.jpeg_bytes(px, 92))
        synth.write(tmp_path / "ds" / f"{i:02d}_copy.jpg", synth.near_copy_bytes(px, 70, 0.9))
    report = scan(tmp_path / "ds", write=False, embed=False).report
    groups = [set(f["paths"]) for f in report["findings"] if f["check"] == "near_duplicate"]
    assert sum({f"{i:02d}.jpg", f"{i:02d}_copy.jpg"} in groups for i in range(30)) >= 29, groups


def test_a_dataset_level_finding_does_not_fail_a_max_count_gate(tmp_path):
    """Near-binary images get one dataset-level low_information finding; strict gates
    low_information with max_count 0, which counts defects of images, not the dataset."""
    from auditor.pipeline.api import scan

    for i in range(30):
        synth.write(
            tmp_path / "ds" / f"{i:02d}.png", synth.png_bytes((synth.digit(i, 64) > 128).astype(np.uint8) * 255)
        )
    result = scan(tmp_path / "ds", write=False, embed=False, rules="strict")
    info = [f for f in result.findings if f.check == "low_information"]
    assert [f.paths for f in info] == [[]] and info[0].details["scope"] == "dataset"
    rule = next(r for r in result.report["gate"]["rules"] if r["rule"] == "low_information")
    assert rule["status"] == "pass" and rule["value"] == 0


def test_a_scan_results_context_still_verifies_after_the_scan(tmp_path):
    from auditor.pipeline.api import run_checks, scan

    tiles = [t for _, t in synth.photo_tiles(96, (1.0,), synth.COLOR_PHOTOS, min_std=20, min_entropy=5)][:24]
    for i, px in enumerate(tiles):
        synth.write(tmp_path / "ds" / f"{i:02d}.jpg", synth.jpeg_bytes(px, 92))
    synth.write(tmp_path / "ds" / "copy.jpg", synth.near_copy_bytes(tiles[0], 70, 0.9))
    result = scan(tmp_path / "ds", write=False, embed=False, cache_dir=tmp_path / "cache")
    result.rules.checks["near_duplicate"].params["max_pixel_difference"] = 0.29  # not the cached graph
    again = run_checks(result.context, result.rules, only=["near_duplicate"])
    assert [set(f.paths) for f in again] == [{"00.jpg", "copy.jpg"}]


def test_pairs_verified_in_chunks_give_the_same_answer(monkeypatch):
    """verify_pairs works through pairs in chunks (bounded memory on a million images): the
    verdicts, differences and kinds do not depend on the chunk size."""
    photos = [t for _, t in synth.photo_tiles(96, (1.0,), synth.COLOR_PHOTOS, min_std=20, min_entropy=5)][:40]
    thumbs = {f"p{i:02d}": _thumb(x) for i, x in enumerate(photos)}
    thumbs |= {f"c{i:02d}": _thumb(synth.crop_area(x, 0.8)) for i, x in enumerate(photos[:10])}
    thumbs |= {f"m{i:02d}": _thumb(x[:, ::-1].copy()) for i, x in enumerate(photos[10:20])}
    keys = sorted(thumbs)
    rng = np.random.default_rng(0)
    pairs = [[keys.index(f"p{i:02d}"), keys.index(f"c{i:02d}")] for i in range(10)]
    pairs += [[keys.index(f"p{i + 10:02d}"), keys.index(f"m{i:02d}")] for i in range(10)]
    pairs += [list(rng.choice(len(keys), 2, replace=False)) for _ in range(100)]
    pairs = np.array(pairs)[rng.permutation(len(pairs))]
    fetch = lambda hs: {h: thumbs[h] for h in hs}  # noqa: E731
    whole = verify.verify_pairs(fetch, keys, pairs, 0.3, 0.35, None, 0.5)
    monkeypatch.setattr(verify, "PAIR_CHUNK", 7)
    chunked = verify.verify_pairs(fetch, keys, pairs, 0.3, 0.35, None, 0.5)
    for x, y in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(x, y)
    assert {verify.CROP, verify.MIRROR} <= set(whole[2][whole[0]].tolist())


def test_window_correlation_from_integral_images_equals_normalising_every_window():
    """The template search takes each window's mean and norm from integral images instead of
    normalising every window: the same correlations (float32 rounding), flat windows 0."""
    from numpy.lib.stride_tricks import sliding_window_view

    rng = np.random.default_rng(0)
    side = verify.SIDE
    pics = np.concatenate([synth.digit(i, side + 5)[None, ..., 0] for i in range(6)]).astype(np.float32)
    pics[5] = 172.6  # a flat picture: every window is flat (its norm from sums is rounding, ~1e-4)
    targets = verify._normalise(rng.normal(size=(6, side, side)).astype(np.float32))
    win = sliding_window_view(pics, (side, side), axis=(1, 2))
    fast = verify._window_correlation(win, verify._window_spread(pics), targets)
    m, p, q = win.shape[:3]
    slow = np.einsum(
        "mwij,mij->mw", verify._normalise(win.reshape(m, p * q, side, side).astype(np.float32)), targets
    ).reshape(m, p, q)
    np.testing.assert_allclose(fast, slow, atol=2e-5)
    assert not fast[5].any()
