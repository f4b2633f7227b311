import numpy as np
import pytest

from auditor.embed import neighbors


def _clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n // 20, d))
    return (centres[rng.integers(0, len(centres), n)] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)


def test_exact_knn_matches_brute_force():
    x = _clustered(600, 32)
    idx, sim = neighbors.knn(x, 5)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    full = xn @ xn.T
    np.fill_diagonal(full, -np.inf)
    expect = np.sort(full, axis=1)[:, ::-1][:, :5]
    assert np.allclose(sim, expect, atol=1e-5)
    assert (idx != np.arange(600)[:, None]).all()
    assert np.allclose(np.take_along_axis(full, idx, axis=1), sim, atol=1e-5)


def test_similar_pairs_are_unique_and_thresholded():
    x = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1], [1, 1]], dtype=np.float32)
    pairs, sims = neighbors.similar_pairs(*neighbors.knn(x, 3), 0.99)
    assert pairs.tolist() == [[0, 1], [2, 3]]
    assert (sims >= 0.99).all()


def test_approximate_graph_above_the_exact_limit(monkeypatch):
    x = _clustered(1500, 32)
    exact, _ = neighbors.knn(x, 10)
    monkeypatch.setattr(neighbors, "EXACT_LIMIT", 100)
    approx, sims = neighbors.knn(x, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, approx, strict=True)])
    assert recall >= 0.9, recall
    assert (approx != np.arange(len(x))[:, None]).all() and np.all(np.diff(sims, axis=1) <= 1e-6)


def test_embedding_near_duplicate_threshold_is_relative_to_the_dataset():
    from auditor.checks.duplicates import embedding_threshold

    params = {"min_embedding_similarity": 0.86, "max_relative_distance": 0.5}
    diverse = np.full((100, 3), 0.6)  # typical nearest neighbour at cosine 0.6
    assert embedding_threshold(diverse, params) == 0.86  # the absolute floor decides
    alike = np.full((100, 3), 0.94)  # everything looks alike (upscaled digits)
    assert embedding_threshold(alike, params) == pytest.approx(0.97)  # only far closer pairs count
    assert embedding_threshold(np.full((0, 3), 0.5), params) == 0.86
