"""The compiled pixel measurements (auditor.measure.kernels) against the numpy reference
(auditor.measure.pixels.measure_pixels): same numbers on real photos and on odd shapes, the same
luminance bits (so the same perceptual hashes), and the numpy fallback when asked for."""

import numpy as np
import pytest

from auditor.demo import synth
from auditor.measure import batch as extract
from auditor.measure import pixels as measure

kernels = pytest.importorskip("auditor.measure.kernels")


def _reference(rgb):
    gray = measure.luminance(rgb)
    return measure.measure_pixels(rgb), np.clip(np.rint(gray), 0, 255).astype(np.uint8)


def _assert_close(got: dict, ref: dict, rel: float = 2e-5, abs_: float = 1e-6):
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=rel, abs=abs_), key


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera", "retina"])
def test_kernels_match_the_numpy_reference_on_real_photos(name):
    rgb = synth.load_photo(name)
    for img in (rgb, synth.blur(rgb, 2), synth.add_noise(rgb, 20), synth.darken(rgb), synth.downscale(rgb, 4)):
        got, gray_u8 = kernels.measure_rgb(img)
        ref, ref_u8 = _reference(img)
        _assert_close(got, ref)
        assert np.array_equal(gray_u8, ref_u8)  # bit-identical luminance: identical pHashes


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (2, 5), (3, 3), (7, 9), (8, 8), (17, 33), (31, 16), (40, 300)])
def test_kernels_match_on_small_and_odd_shapes(shape):
    rng = np.random.default_rng(sum(shape))
    rgb = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    got, gray_u8 = kernels.measure_rgb(rgb)
    ref, ref_u8 = _reference(rgb)
    _assert_close(got, ref)
    assert np.array_equal(gray_u8, ref_u8)


@pytest.mark.parametrize("value", [0, 3, 128, 255])
def test_kernels_on_flat_and_gray_images(value):
    flat = np.full((64, 48, 3), value, np.uint8)
    got, _ = kernels.measure_rgb(flat)
    ref, _ = _reference(flat)
    _assert_close(got, ref)
    assert got["contrast"] == 0.0 and got["colorfulness"] == 0.0 and got["channel_spread"] == 0.0
    gray = synth.to_grayscale_rgb(synth.load_photo("coffee"))  # RGB with equal channels
    got, _ = kernels.measure_rgb(gray)
    assert got["channel_spread"] == 0.0 and got["colorfulness"] == pytest.approx(0.0, abs=1e-9)


def test_scan_gives_the_same_properties_with_and_without_the_compiled_kernels(tmp_path, monkeypatch):
    path = tmp_path / "coffee.jpg"
    path.write_bytes(synth.jpeg_bytes(synth.load_photo("coffee"), quality=85))
    with_jit = extract.measure_file(str(path))
    monkeypatch.setenv("AUDITOR_NO_JIT", "1")
    assert extract.pixel_kernels() is None
    without = extract.measure_file(str(path))
    assert with_jit[0] == without[0]
    numeric = {k: v for k, v in without[1].items() if isinstance(v, float)}
    _assert_close({k: with_jit[1][k] for k in numeric}, numeric)
    exact = {k: v for k, v in without[1].items() if not isinstance(v, float)}
    assert {k: with_jit[1][k] for k in exact} == exact  # hashes, sizes, mode: identical


def test_quantile_linear_is_numpys_quantile_bit_for_bit():
    rng = np.random.default_rng(3)
    for trial in range(3000):
        values = rng.random(int(rng.integers(1, 400))) * 10.0 ** int(rng.integers(-2, 4))
        if trial % 3 == 0:
            values = np.round(values, 1)  # ties
        for q in (0.0, 0.1, 0.5, 0.73, 1.0):
            assert measure.quantile_linear(values, q) == np.quantile(values, q)


def test_noise_pca_gathered_in_the_kernel_matches_the_reference_bit_for_bit():
    rng = np.random.default_rng(4)
    images = [synth.load_photo(n) for n in ("astronaut", "coffee")]
    images += [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((16, 300), (33, 70), (112, 81))]
    for rgb in images:
        rgb = measure.downscale_to(rgb, 1024)
        h, w = rgb.shape[:2]
        step = measure.pca_step(h, w)
        patches = kernels._kernel()(np.ascontiguousarray(rgb), measure.NOISE_BLOCK, measure.FINE_BLUR_SIZE, step)[-1]
        batched = measure.pca_sigmas_of_patches(patches)
        for c in range(3):
            assert batched[c] == measure.pca_sigma_of_patches(patches[c]) == measure.pca_noise_sigma(rgb[..., c])
