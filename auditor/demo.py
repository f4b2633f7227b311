"""``audit demo``: a small labeled dataset built offline, with every defect injected."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from . import synth

#: Demo classes: each class is a photo, its images are non-overlapping tiles of it.
DEMO_CLASSES = ("astronaut", "coffee", "rocket", "motorcycle", "china", "flower")


def build_demo(root: str | Path, tile: int = 128, seed: int = 0) -> dict:
    """Write the demo dataset under ``root`` (split-folders layout, train/val) and return
    {"images": n, "defects": [{"check", "path"}, ...]} naming every injected defect.
    An existing demo folder is replaced; nothing else is touched."""
    root = Path(root)
    marker = root / ".audit-demo"
    if root.exists():
        if not marker.exists():
            raise FileExistsError(f"{root} exists and is not a demo dataset; choose another --out")
        shutil.rmtree(root)
    root.mkdir(parents=True)
    marker.write_text("built by audit demo\n")
    rng = np.random.default_rng(seed)
    tiles: dict[str, list[np.ndarray]] = {c: [] for c in DEMO_CLASSES}
    for name, t in synth.photo_tiles(tile, photos=DEMO_CLASSES):
        tiles[name].append(t)
    spare: list[tuple[str, np.ndarray]] = []  # tiles kept out of the clean set for defects
    count = 0
    for cls, ts in tiles.items():
        order = rng.permutation(len(ts))
        n_spare = min(4, len(ts) - 3)  # keep at least 3 clean tiles per class (val and train)
        spare.extend((cls, ts[i]) for i in order[:n_spare])
        rest = order[n_spare:]
        n_val = max(2, len(rest) // 4)
        for k, i in enumerate(rest):
            split = "val" if k < n_val else "train"
            synth.write(root / split / cls / f"{cls}_{i:03d}.jpg", synth.jpeg_bytes(ts[i], 92))
            count += 1

    defects: list[dict] = []

    def add(check: str, rel: str, data: bytes) -> None:
        nonlocal count
        synth.write(root / rel, data)
        defects.append({"check": check, "path": rel})
        count += 1

    pick = iter(rng.permutation(len(spare)).tolist())

    def nxt() -> tuple[str, np.ndarray]:
        return spare[next(pick)]

    c, px = nxt()
    add("corrupt", f"train/{c}/truncated.jpg", synth.truncated_jpeg(px))
    add("corrupt", f"train/{c}/empty.jpg", b"")
    add("corrupt", f"train/{c}/not_an_image.jpg", synth.random_bytes(2048, seed))
    add("corrupt", f"train/{c}/bomb.png", synth.bomb_png())
    c, px = nxt()
    add("format_mismatch", f"train/{c}/really_a_png.jpg", synth.png_bytes(px))
    c, px = nxt()
    data = synth.jpeg_bytes(px, 92)
    add("exact_duplicate", f"train/{c}/copy_a.jpg", data)
    add("exact_duplicate", f"train/{c}/copy_b.jpg", data)
    c, px = nxt()
    add("near_duplicate", f"train/{c}/original.jpg", synth.jpeg_bytes(px, 92))
    add("near_duplicate", f"train/{c}/recompressed_q40.jpg", synth.near_copy_bytes(px))
    c, px = nxt()
    data = synth.jpeg_bytes(px, 92)
    add("leakage", f"train/{c}/leaked.jpg", data)
    add("leakage", f"val/{c}/leaked.jpg", data)
    c, px = nxt()
    add("low_resolution", f"train/{c}/downscaled_4x.jpg", synth.jpeg_bytes(synth.downscale(px, 4), 92))
    c, px = nxt()
    add(
        "odd_aspect_ratio",
        f"train/{c}/strip.jpg",
        synth.jpeg_bytes(np.ascontiguousarray(np.concatenate([px[:32]] * 4, axis=1)), 92),
    )
    c, _ = nxt()
    big = synth.load_photo(c)
    add("odd_size", f"train/{c}/full_photo.jpg", synth.jpeg_bytes(big, 92))
    c, px = nxt()
    add("blurry", f"train/{c}/blurred.jpg", synth.jpeg_bytes(synth.blur(px, 3), 92))
    c, px = nxt()
    add("noisy", f"train/{c}/noisy.png", synth.png_bytes(synth.add_noise(px, 30, seed)))
    c, px = nxt()
    add("dark", f"train/{c}/dark.jpg", synth.jpeg_bytes(synth.darken(px), 92))
    c, px = nxt()
    add("bright", f"train/{c}/overexposed.jpg", synth.jpeg_bytes(synth.overexpose(px), 92))
    c, px = nxt()
    add("low_contrast", f"train/{c}/washed_out.jpg", synth.jpeg_bytes(synth.wash_out(px), 92))
    c, px = nxt()
    add("low_information", f"train/{c}/blank.png", synth.png_bytes(synth.blank(px.shape[:2], seed)))
    c, px = nxt()
    add("grayscale", f"train/{c}/grayscale.jpg", synth.jpeg_bytes(synth.to_grayscale_rgb(px), 92))
    c, px = nxt()
    add("near_duplicate", f"train/{c}/photo.jpg", synth.jpeg_bytes(px, 92))
    add("near_duplicate", f"train/{c}/mirrored.jpg", synth.jpeg_bytes(synth.hflip(px), 92))
    # label defects: one picture filed under two classes, a class spelled two ways, a val
    # class that train never shows
    c, px = nxt()
    other = next(k for k in DEMO_CLASSES if k != c)
    data = synth.jpeg_bytes(px, 92)
    add("label_conflict", f"train/{c}/filed_twice.jpg", data)
    add("label_conflict", f"train/{other}/filed_twice.jpg", data)
    c, px = nxt()
    add("class_name_inconsistency", f"train/{c.capitalize()}/capitalised_class.jpg", synth.jpeg_bytes(px, 92))
    c, px = nxt()
    add("unseen_class", "val/zebra/not_in_train.jpg", synth.jpeg_bytes(px, 92))
    (root / "README.txt").write_text("Demo dataset built by `audit demo`. Not an image: skipped.\n")
    (root / "defects.json").write_text(json.dumps(defects, indent=2) + "\n")
    return {"images": count, "defects": defects}
