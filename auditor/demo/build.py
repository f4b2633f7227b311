"""``audit demo``: a small labeled dataset built offline, with every defect injected.

A folder that cannot be written (a full disk, a read-only folder) is an
:class:`auditor.core.fsutil.OutputError` naming it (one line and exit 2 at the command line), and
the folders made for the demo are removed: nothing half-built is left."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from auditor.core.fsutil import OutputError, make_dirs
from auditor.demo import synth


@contextmanager
def _writing(root: Path, what: str) -> Iterator[None]:
    """Build ``what`` in ``root``, made here with its missing parents. On an OSError those
    folders (with what was written into them; a folder that was there before stays) are
    removed and :class:`OutputError` says why."""
    created: list[Path] = []
    try:
        created = make_dirs(root)
        yield
    except OSError as exc:
        if created:
            shutil.rmtree(created[0], ignore_errors=True)
        raise OutputError(f"cannot write {what} to {root}: {exc.strerror or exc}") from exc


# --- detection demo: COCO / YOLO with every box defect --------------------------------------

SIZE = 160
NAMES = ["zero", "one", "two"]


def _pad(box, pad: float):
    cls, x, y, w, h = box
    x, y, w, h = x - w * pad / 2, y - h * pad / 2, w * (1 + pad), h * (1 + pad)
    x, y = max(0.0, x), max(0.0, y)
    return cls, x, y, min(w, SIZE - x), min(h, SIZE - y)


def scenes(pad_val: float) -> dict:
    train = synth.detection_scenes(100, SIZE, seed=1)
    val = [(img, [_pad(b, pad_val) for b in boxes]) for img, boxes in synth.detection_scenes(100, SIZE, seed=2)]
    return {"train": train, "val": val}


def make_coco(root, pad_val: float = 0.15) -> list[dict]:
    """A COCO detection dataset from real images (scikit-learn digits pasted on scikit-image
    photo crops, 100 per split), val boxes padded by ``pad_val`` (drawn looser), and every
    box defect injected into train. Returns the injected defects as ``{"check", "path"}``
    (``path`` None for the dataset-level findings)."""
    root = Path(root)
    with _writing(root, "the detection demo dataset"):
        return _make_coco(root, pad_val)


def _make_coco(root: Path, pad_val: float) -> list[dict]:
    for split, items in scenes(pad_val).items():
        images, anns = [], []
        for i, (img, boxes) in enumerate(items):
            name = f"{split}_{i:03d}.jpg"
            synth.write(root / "images" / split / name, synth.jpeg_bytes(img, 92))
            images.append({"id": i, "file_name": name, "width": SIZE, "height": SIZE})
            if split == "train" and i == 6:
                continue  # unannotated image
            for cls, x, y, w, h in boxes:
                anns.append({"id": len(anns), "image_id": i, "category_id": cls + 1, "bbox": [x, y, w, h]})
        if split == "train":
            first = {a["image_id"]: a for a in reversed(anns)}
            extra = [
                {"image_id": 0, "category_id": 1, "bbox": [150, 10, 40, 30]},  # out of bounds (19% beyond)
                {"image_id": 1, "category_id": 2, "bbox": [20, 20, 0, 15]},  # degenerate
                {"image_id": 2, "category_id": 3, "bbox": [60, 60, 2, 2]},  # tiny
                {**first[3], "bbox": [v + (1 if k == 0 else 0) for k, v in enumerate(first[3]["bbox"])]},  # duplicate
                {**first[4], "category_id": first[4]["category_id"] % 3 + 1},  # label conflict
                {"image_id": 5, "category_id": 99, "bbox": [10, 10, 30, 30]},  # unknown category
                {"image_id": 100, "category_id": 1, "bbox": [10, 10, 30, 30]},  # missing image file
                {"image_id": 555, "category_id": 1, "bbox": [10, 10, 30, 30]},  # unknown image id
            ]
            for e in extra:
                anns.append({**e, "id": len(anns)})
            images.append({"id": 100, "file_name": "gone.jpg", "width": SIZE, "height": SIZE})
            images[8]["width"] = SIZE + 40  # declared size no longer that of the file (resized since)
        cats = [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]
        cats.append({"id": len(NAMES) + 1, "name": "seven"})  # declared, never annotated
        synth.write(root / "annotations" / f"instances_{split}.json",
                    json.dumps({"images": images, "annotations": anns, "categories": cats}).encode())  # fmt: skip
    checks = ("box_out_of_bounds", "box_degenerate", "box_tiny", "box_duplicate", "box_label_conflict",
              "box_unknown_category", "box_unannotated_image")  # fmt: skip
    injected = [{"check": c, "path": f"images/train/train_{i:03d}.jpg"} for i, c in enumerate(checks)]
    injected.append({"check": "box_missing_image", "path": "images/train/gone.jpg"})
    injected.append({"check": "box_image_size_mismatch", "path": "images/train/train_008.jpg"})
    injected.append({"check": "box_class_imbalance", "path": None})  # "class seven has only 0 boxes"
    if pad_val > 0:
        injected.append({"check": "box_style_shift", "path": None})
    return injected


def make_yolo(root, pad_val: float = 0.15) -> None:
    """The YOLO version of :func:`make_coco` (same images and defects, plus an empty label
    file for a background image and a label file without its image)."""
    root = Path(root)
    for split, items in scenes(pad_val).items():
        for i, (img, boxes) in enumerate(items):
            synth.write(root / "images" / split / f"{i:03d}.jpg", synth.jpeg_bytes(img, 92))
            if split == "train" and i == 6:
                continue  # unannotated: no label file
            lines = [f"{c} {(x + w / 2) / SIZE:.6f} {(y + h / 2) / SIZE:.6f} {w / SIZE:.6f} {h / SIZE:.6f}"
                     for c, x, y, w, h in boxes]  # fmt: skip
            if split == "train" and i == 7:
                lines = []  # background on purpose: empty label file
            if split == "train" and i == 0:
                lines.append("0 0.95 0.2 0.2 0.2")  # out of bounds
            if split == "train" and i == 1:
                lines.append("1 0.3 0.3 0.0 0.1")  # degenerate
            if split == "train" and i == 2:
                lines.append("2 0.5 0.5 0.01 0.01")  # tiny (1.6 px)
            if split == "train" and i == 3:
                lines.append(lines[0])  # duplicate
            if split == "train" and i == 4:
                c, *rest = lines[0].split()
                lines.append(" ".join([str((int(c) + 1) % 3), *rest]))  # label conflict
            if split == "train" and i == 5:
                lines.append("7 0.5 0.5 0.2 0.2")  # unknown class index
            synth.write(root / "labels" / split / f"{i:03d}.txt", ("\n".join(lines) + "\n").encode())
    synth.write(root / "labels" / "train" / "orphan.txt", b"0 0.5 0.5 0.2 0.2\n")  # no image
    synth.write(root / "data.yaml", ("names: [" + ", ".join(NAMES) + "]\n").encode())


#: Demo classes: each class is a photo, its images are non-overlapping tiles of it.
DEMO_CLASSES = ("astronaut", "coffee", "rocket", "motorcycle", "china", "flower")


def build_demo(root: str | Path, tile: int = 128, seed: int = 0) -> dict:
    """Write the demo dataset under ``root`` (split-folders layout, train/val) and return
    {"images": n, "defects": [{"check", "path"}, ...]} naming every injected defect.
    An existing demo folder is replaced; nothing else is touched (:class:`OutputError`)."""
    root = Path(root)
    marker = root / ".audit-demo"
    if root.exists():
        if not marker.exists():
            raise OutputError(f"{root} exists and is not a demo dataset; choose another --out")
        try:
            shutil.rmtree(root)
        except OSError as exc:
            raise OutputError(f"cannot replace the demo dataset {root}: {exc.strerror or exc}") from exc
    with _writing(root, "the demo dataset"):
        return _fill_demo(root, tile, seed)


def _fill_demo(root: Path, tile: int, seed: int) -> dict:
    (root / ".audit-demo").write_text("built by audit demo\n")
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
