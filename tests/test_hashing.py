import numpy as np
import pytest
from skimage import data

from auditor.demo import synth
from auditor.io.decode import decode_bytes
from auditor.measure import hashing
from auditor.measure.pixels import luminance


def _brute(h, r):
    i, j = np.triu_indices(len(h), 1)
    d = hashing.hamming(h[i], h[j])
    keep = d <= r
    return set(zip(i[keep].tolist(), j[keep].tolist(), strict=True))


@pytest.mark.parametrize("radius", [0, 3, 6, 8])
def test_multi_index_search_equals_brute_force(radius):
    rng = np.random.default_rng(radius)
    n = 4000  # above the brute-force cut-over, so the multi-index path runs
    h = rng.integers(0, 2**63, size=n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    # plant near pairs at every distance up to radius + 2 (those beyond must not match)
    for k in range(200):
        src, dst = rng.choice(n, 2, replace=False)
        flips = rng.choice(64, size=k % (radius + 3), replace=False)
        v = int(h[src])
        for f in flips:
            v ^= 1 << int(f)
        h[dst] = np.uint64(v)
    pairs, dist = hashing.near_pairs(h, radius)
    assert set(map(tuple, pairs.tolist())) == _brute(h, radius)
    assert (dist <= radius).all()


def test_small_input_uses_brute_force_and_agrees():
    rng = np.random.default_rng(1)
    h = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    h[10] = h[20] ^ np.uint64(0b101)
    pairs, dist = hashing.near_pairs(h, 4)
    assert set(map(tuple, pairs.tolist())) == _brute(h, 4)
    assert (10 if 10 < 20 else 20, 20) in set(map(tuple, pairs.tolist()))


def test_group_pairs_connected_components():
    groups = hashing.group_pairs(6, np.array([[0, 1], [1, 2], [4, 5]]))
    assert groups == [[0, 1, 2], [4, 5]]


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket"])
def test_jpeg_q40_resized_copy_is_within_default_radius(name):
    rgb = getattr(data, name)()

    def ph(b):
        img = decode_bytes(b).rgb
        return hashing.perceptual_hashes(np.rint(luminance(img)).astype(np.uint8))

    a, b = ph(synth.png_bytes(rgb)), ph(synth.near_copy_bytes(rgb, 40, 0.9))
    assert bin(a["phash"] ^ b["phash"]).count("1") <= 6
    assert bin(a["dhash"] ^ b["dhash"]).count("1") <= 12


def test_pixel_hash_equal_for_same_pixels_in_two_formats():
    rgb = data.astronaut()[:64, :64]
    a = decode_bytes(synth.png_bytes(rgb)).rgb
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "BMP")
    b = decode_bytes(buf.getvalue()).rgb
    assert hashing.pixel_hash(a) == hashing.pixel_hash(b)
    assert hashing.pixel_hash(a) != hashing.pixel_hash(a[:, ::-1].copy())


def test_group_pairs_matches_scipy_connected_components():
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rng = np.random.default_rng(0)
    for _ in range(100):
        n, m = int(rng.integers(2, 200)), int(rng.integers(1, 300))
        pairs = rng.integers(0, n, (m, 2))
        graph = coo_matrix((np.ones(m), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
        _, labels = connected_components(graph, directed=False)
        members: dict[int, list[int]] = {}
        for node in np.unique(pairs):
            members.setdefault(int(labels[node]), []).append(int(node))
        expected = sorted((sorted(g) for g in members.values() if len(g) > 1), key=lambda g: g[0])
        assert hashing.group_pairs(n, pairs) == expected
    chain = np.stack([np.arange(9999), np.arange(1, 10000)], axis=1)  # a long path is one group
    assert hashing.group_pairs(10000, chain) == [list(range(10000))]


def test_typical_nearest_distance_ignores_copies_and_matches_brute_force():
    rng = np.random.default_rng(3)
    h = rng.integers(0, 2**63, size=600, dtype=np.uint64)
    h[300:400] = h[:100]  # exact copies are not neighbours
    d = np.bitwise_count(h[:, None] ^ h[None, :]).astype(int)
    d[d == 0] = 99
    for k in (1, 5):
        assert hashing.typical_nearest_distance(h, sample=600, k=k) == np.median(np.sort(d, axis=1)[:, k - 1])
    assert np.isnan(hashing.typical_nearest_distance(np.full(5, 7, dtype=np.uint64)))


def test_phash_radius_survives_a_dataset_of_near_copies():
    """Every picture with a copy a few bits away: the 5th neighbour is still another picture,
    so the radius stays at the absolute limit instead of collapsing to 0."""
    from auditor.checks.duplicates import phash_radius

    rng = np.random.default_rng(4)
    base = rng.integers(0, 2**63, size=200, dtype=np.uint64)
    copies = base ^ (np.uint64(1) << rng.integers(0, 60, size=200).astype(np.uint64))  # 1 bit away
    assert phash_radius(np.concatenate([base, copies]), {"max_phash_distance": 6,
                                                         "max_relative_phash_distance": 0.28}) == 6  # fmt: skip


def _phashes(images):
    from PIL import Image

    return hashing.to_uint64(
        hashing.perceptual_hashes(np.asarray(Image.fromarray(x).convert("L")))["phash"] for x in images
    )


def test_phash_radius_is_relative_to_the_dataset_on_real_images():
    """Photos keep the absolute 6 bits; upscaled 8x8 digits (distinct digits 4-6 bits
    apart) tighten it, while a JPEG-q40 90% copy of a digit still matches."""
    from auditor.checks.duplicates import phash_radius

    params = {"max_phash_distance": 6, "max_relative_phash_distance": 0.28}
    photos = _phashes([t for _, t in synth.photo_tiles(128, scales=(1.0, 0.5))])
    assert hashing.typical_nearest_distance(photos) >= 22
    assert phash_radius(photos, params) == 6
    digits = [synth.digit(i, 96) for i in range(600)]
    dh = _phashes(digits)
    radius = phash_radius(dh, params)
    assert radius <= 3
    pairs, _ = hashing.near_pairs(dh, 6)
    assert len(pairs) > 20  # what the absolute radius alone would call duplicates
    assert len(hashing.near_pairs(dh, radius)[0]) <= 0.2 * len(pairs)
    copies = [decode_bytes(synth.near_copy_bytes(x)).rgb for x in digits[:50]]
    d = hashing.hamming(dh[:50], _phashes(copies))
    assert (d <= radius).mean() >= 0.95


def test_perceptual_hashes_equal_imagehash_on_real_photos():
    """The matrix-DCT pHash and the dHash are bit for bit imagehash's (the reference)."""
    import imagehash
    from PIL import Image

    images = [t for _, t in synth.photo_tiles(96, scales=(1.0, 0.5))][:60] + [data.camera(), data.coffee()]
    images += [synth.digit(i, 64) for i in range(20)]
    for rgb in images:
        g8 = np.rint(luminance(rgb if rgb.ndim == 3 else np.repeat(rgb[..., None], 3, 2))).astype(np.uint8)
        img = Image.fromarray(g8, "L")
        ours = hashing.perceptual_hashes(g8)
        assert ours["phash"] == hashing._pack(imagehash.phash(img).hash)
        assert ours["dhash"] == hashing._pack(imagehash.dhash(img).hash)
