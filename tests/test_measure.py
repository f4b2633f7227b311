import numpy as np
import pytest
from skimage import data

from auditor.demo import synth
from auditor.measure import pixels as measure


@pytest.mark.parametrize("name", ["astronaut", "coffee", "camera"])
def test_sharpness_falls_as_blur_radius_grows(name):
    img = getattr(data, name)()
    rgb = img if img.ndim == 3 else np.repeat(img[:, :, None], 3, axis=2)
    scores = [measure.sharpness(measure.luminance(synth.blur(rgb, r) if r else rgb)) for r in (0, 0.5, 1, 2, 3, 5)]
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores
    assert scores[0] > 0.5 and scores[-1] < scores[0] / 2.5


@pytest.mark.parametrize("sigma", [5, 10, 20, 30, 40])
@pytest.mark.parametrize("size", [64, 256])
def test_noise_estimate_within_20_percent(sigma, size):
    rng = np.random.default_rng(sigma)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = 70 + 100 * (xx / size) + 20 * np.sin(yy / 9.0)  # stays within 50..200: no clipping
    noisy = np.clip(smooth + rng.normal(0, sigma, smooth.shape), 0, 255)
    est = measure.noise_sigma(noisy.astype(np.float32))
    assert abs(est - sigma) <= 0.2 * sigma, (sigma, est)


@pytest.mark.parametrize("sigma", [5, 10, 20, 30])
@pytest.mark.parametrize("size", [32, 64, 256])
def test_pca_noise_estimate_within_20_percent(sigma, size):
    rng = np.random.default_rng(sigma + size)
    yy, xx = np.mgrid[0:size, 0:size]
    smooth = 70 + 100 * (xx / size) + 20 * np.sin(yy / 9.0)
    noisy = np.clip(smooth + rng.normal(0, sigma, smooth.shape), 0, 255)
    est = measure.pca_noise_sigma(noisy.astype(np.float32))
    assert abs(est - sigma) <= 0.2 * sigma, (sigma, est)
    assert np.isnan(measure.pca_noise_sigma(np.zeros((7, 40), np.float32)))  # too small to say


@pytest.mark.parametrize("side", [32, 64, 128])
def test_fine_texture_is_not_read_as_noise(side):
    """Gravel (a real photo, scikit-image) scaled to small tiles has no flat block: the block
    estimate takes its texture for noise sigma 9-17. The patch-PCA estimate reads a third to
    a half less, and the noise a tile really carries (sigma 20) still reads as about 20."""
    from PIL import Image

    crop = data.gravel()[150:450, 150:450]
    tile = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BICUBIC)).astype(np.float32)
    noisy = np.clip(tile + np.random.default_rng(0).normal(0, 20, tile.shape), 0, 255).astype(np.float32)
    block, pca = measure.noise_sigma(tile), measure.pca_noise_sigma(tile)
    assert block > 9 and pca < 0.75 * block, (block, pca)
    assert measure.plane_noise_sigma(tile) == pytest.approx(pca)
    assert 17 < measure.plane_noise_sigma(noisy) < 30


def test_noise_estimate_on_a_real_photo():
    """On a clean real photo the noise estimate stays small; adding sigma=20 noise raises it
    to about 20."""
    rgb = data.astronaut()
    clean = measure.measure_pixels(rgb)["noise_sigma"]
    noisy = measure.measure_pixels(synth.add_noise(rgb, 20))["noise_sigma"]
    assert clean < 5
    assert 15 < noisy < 25


def test_flat_image_properties():
    gray = np.full((50, 40), 100.0, dtype=np.float32)
    assert measure.entropy_bits(gray) == 0.0
    assert measure.contrast(gray) == 0.0
    assert measure.noise_sigma(gray) == 0.0
    stats = measure.brightness_stats(gray)
    assert stats["brightness_mean"] == 100 and stats["brightness_p05"] == 100 and stats["brightness_p95"] == 100


def test_entropy_of_uniform_histogram_is_8_bits():
    gray = np.arange(256, dtype=np.float32).reshape(16, 16)
    assert measure.entropy_bits(gray) == pytest.approx(8.0)


def test_channel_spread_tells_grayscale_from_color():
    rgb = data.astronaut()
    assert measure.channel_spread(rgb) > 50
    assert measure.channel_spread(synth.to_grayscale_rgb(rgb)) == 0
    assert measure.colorfulness(synth.to_grayscale_rgb(rgb)) == 0


def test_brightness_percentiles_match_numpy():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, size=(64, 64)).astype(np.float32)
    stats = measure.brightness_stats(gray)
    assert stats["brightness_p05"] == pytest.approx(np.percentile(gray, 5), abs=1)
    assert stats["brightness_p95"] == pytest.approx(np.percentile(gray, 95), abs=1)


def test_downscale_to_bounds_the_longer_side():
    rgb = np.zeros((3000, 1000, 3), dtype=np.uint8)
    small = measure.downscale_to(rgb, 1024)
    assert max(small.shape[:2]) <= 1024
    assert measure.downscale_to(rgb[:500, :500], 1024).shape == (500, 500, 3)


def test_downscale_keeps_a_one_pixel_strip():
    strip = np.full((3000, 1, 3), 120, np.uint8)
    out = measure.downscale_to(strip, 1024)
    assert out.shape[1] == 1 and out.shape[0] >= 1
    assert measure.measure_pixels(out)["brightness_mean"] == pytest.approx(120, abs=0.5)


def test_box_filter_is_scipys_uniform_filter1d_bit_for_bit():
    # the numpy reference's sharpness box filter, written so a small scan needs no scipy
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(5)
    planes = [measure.luminance(synth.load_photo(n)) for n in ("astronaut", "camera")]
    planes += [(rng.random((int(h), int(w))) * 255).astype(np.float32) for h, w in rng.integers(3, 90, (150, 2))]
    planes += [np.full((3, 40), 7.25, np.float32), rng.integers(0, 256, (4, 3)).astype(np.float32)]
    for gray in planes:
        for size in (measure.FINE_BLUR_SIZE, 11):
            for axis in (0, 1):
                ref = ndimage.uniform_filter1d(gray, size, axis=axis, mode="reflect")
                got = measure.box_filter(gray, size, axis)
                assert got.dtype == ref.dtype and got.flags.c_contiguous and np.array_equal(got, ref)
