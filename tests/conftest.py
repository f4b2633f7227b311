from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from auditor.demo import synth


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own measurement cache: no test sees another's."""
    monkeypatch.setenv("AUDITOR_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="session")
def tiles() -> list[tuple[str, np.ndarray]]:
    """Real photo tiles (128 px) from scikit-image and scikit-learn sample images."""
    return list(synth.photo_tiles(128, photos=("astronaut", "coffee", "rocket", "motorcycle", "china", "flower")))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    """A tiny real-image classification dataset for the fine-tuning tests: 40 crops (96 px, JPEG)
    of two scikit-image photos, classes cat and coffee, every 5th image in val."""
    root = tmp_path_factory.mktemp("tiny")
    for cls, photo in (("cat", "chelsea"), ("coffee", "coffee")):
        for i, (_n, rgb) in enumerate(synth.random_crops(20, 96, seed=7, photos=(photo,))):
            split = "val" if i % 5 == 0 else "train"
            synth.write(root / split / cls / f"{i}.jpg", synth.jpeg_bytes(rgb, 90))
    return root


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (to prove a scan modifies nothing)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[p.relative_to(root).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def measured_mixed_files(tmp_path: Path) -> tuple[list[str], dict]:
    """Six files written into ``tmp_path`` and measured: three decodable PNGs of odd sizes, a
    JPEG, a truncated PNG and an empty file. Returns (their names, measure_all's results)."""
    from auditor.io.store import Store
    from auditor.measure.batch import measure_all

    files = {f"ok{i}.png": synth.png_bytes((np.random.default_rng(i).random((20 + i, 30, 3)) * 255).astype(np.uint8))
             for i in range(3)}  # fmt: skip
    files["q.jpg"] = synth.jpeg_bytes(np.full((30, 40, 3), 90, np.uint8), 80)
    files["cut.png"] = files["ok0.png"][:60]
    files["empty.png"] = b""
    for name, data in files.items():
        synth.write(tmp_path / name, data)
    with Store(None) as store:
        measured = measure_all([str(tmp_path / n) for n in files], store, workers=1)
    return list(files), measured
