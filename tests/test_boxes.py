"""Detection datasets: COCO and YOLO readers, the box_* checks on injected defects, clean."""

from __future__ import annotations

import json

import pytest

from auditor.demo import synth
from auditor.demo.build import NAMES, SIZE, make_coco, make_yolo  # shared with audit demo


def _by_check(result):
    out: dict[str, list] = {}
    for f in result.findings:
        out.setdefault(f.check, []).append(f)
    return out


def _assert_box_defects(found, fmt):
    assert [f.paths for f in found["box_out_of_bounds"]] == [["images/train/" + ("train_000.jpg" if fmt == "coco"
                                                                               else "000.jpg")]]  # fmt: skip
    assert len(found["box_degenerate"]) == 1 and "001" in found["box_degenerate"][0].paths[0]
    assert len(found["box_tiny"]) == 1 and "002" in found["box_tiny"][0].paths[0]
    assert len(found["box_duplicate"]) == 1 and "003" in found["box_duplicate"][0].paths[0]
    assert len(found["box_label_conflict"]) == 1 and "004" in found["box_label_conflict"][0].paths[0]
    assert len(found["box_unknown_category"]) == 1 and "005" in found["box_unknown_category"][0].paths[0]
    assert [f.paths for f in found["box_unannotated_image"]] == [["images/train/" + ("train_006.jpg" if fmt == "coco"
                                                                                   else "006.jpg")]]  # fmt: skip
    # the padded split is named, with the size change in words
    style = found["box_style_shift"]
    top = style[0]
    assert top.details["reference"] == "train" and top.details["other"] == "val"
    assert "val boxes are" in top.message and "than train boxes" in top.message
    props = {d["property"] for f in style for d in f.details["differences"]}
    assert {"width", "height", "area"} <= props
    area = next(d for f in style if f.details["class"] == "(all classes)" for d in f.details["differences"]
                if d["property"] == "area")  # fmt: skip
    assert 0.2 < area["change"] < 0.6  # 15% padding on each side length: +32% area, plus sampling
    for f in found["box_out_of_bounds"] + found["box_duplicate"]:
        assert f.details["boxes"] and len(f.details["boxes"][0]["box"]) == 4


def _scan_injected(tmp_path, fmt):
    """Build the ``fmt`` dataset with every defect, scan it, check the common defects."""
    from auditor.pipeline.api import scan

    root = tmp_path / fmt
    (make_coco if fmt == "coco" else make_yolo)(root)
    result = scan(root, tmp_path / "r", embed=False, cache_dir=tmp_path / "c")
    assert result.discovery.layout == fmt
    found = _by_check(result)
    _assert_box_defects(found, fmt)
    return result, found


def test_coco_box_checks_find_every_injected_defect(tmp_path):
    result, found = _scan_injected(tmp_path, "coco")
    missing = found["box_missing_image"]
    assert {m.details.get("kind") for m in missing} == {"missing_image", "unknown_image_id"}
    assert any(m.paths == ["images/train/gone.jpg"] for m in missing)
    assert "annotations[" in found["box_unknown_category"][0].message
    boxes = result.report["boxes"]
    assert boxes["format"] == "coco" and boxes["images"] == 200 and set(boxes["classes"]) >= set(NAMES)
    assert boxes["classes"]["one"]["median_width_px"] > 20
    assert {r["split"] for r in result.table.to_dict("records")} == {"train", "val"}
    html = (tmp_path / "r" / "report.html").read_text()
    assert 'id="boxes"' in html and "<td>zero</td>" in html
    assert html.count("<rect x=") >= 6  # the flagged boxes drawn on their thumbnails
    assert "instances_train.json: annotations[" in html
    # no false alarms on the clean val split except the style shift
    val_box = [f for f in result.findings if f.check.startswith("box_") and f.check != "box_style_shift"
               and any(p.startswith("images/val/") for p in f.paths)]  # fmt: skip
    assert not val_box


def test_yolo_box_checks_find_every_injected_defect(tmp_path):
    _, found = _scan_injected(tmp_path, "yolo")
    assert found["box_missing_image"][0].details["where"] == "labels/train/orphan.txt"
    assert "labels/train/005.txt:" in found["box_unknown_category"][0].message
    assert not any("007" in f.paths[0] for f in found["box_unannotated_image"])  # empty file = background


def test_no_style_shift_without_padding(tmp_path):
    from auditor.pipeline.api import scan

    root = tmp_path / "coco"
    make_coco(root, pad_val=0.0)
    result = scan(root, tmp_path / "r", embed=False, cache_dir=tmp_path / "c")
    assert not [f for f in result.findings if f.check == "box_style_shift"]


def test_malformed_annotation_files_are_input_errors(tmp_path):
    from typer.testing import CliRunner

    from auditor.cli.app import app

    root = tmp_path / "y"
    synth.write(root / "images" / "a.jpg", synth.jpeg_bytes(synth.detection_scenes(1, 64)[0][0]))
    synth.write(root / "labels" / "a.txt", b"0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n")
    res = CliRunner().invoke(app, ["scan", str(root), "--no-embed", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "a.txt:2" in res.output
    assert "class x_center y_center width height" in res.output

    c = tmp_path / "c"
    synth.write(c / "images" / "a.jpg", synth.jpeg_bytes(synth.detection_scenes(1, 64)[0][0]))
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "category_id": 1,
           "bbox": [1, 2, 3]}], "categories": [{"id": 1, "name": "x"}]}  # fmt: skip
    synth.write(c / "instances_train.json", json.dumps(doc).encode())
    res = CliRunner().invoke(app, ["scan", str(c), "--no-embed", "--out", str(tmp_path / "o2")])
    assert res.exit_code == 2 and "$.annotations[0].bbox" in res.output and "4 numbers" in res.output
    synth.write(c / "instances_train.json", b'{"images": [}')
    res = CliRunner().invoke(app, ["scan", str(c), "--no-embed", "--out", str(tmp_path / "o3")])
    assert res.exit_code == 2 and "not valid JSON (line 1" in res.output
    doc["images"][0]["file_name"] = "../../etc/passwd"
    doc["annotations"][0]["bbox"] = [1, 2, 3, 4]
    synth.write(c / "instances_train.json", json.dumps(doc).encode())
    res = CliRunner().invoke(app, ["scan", str(c), "--no-embed", "--out", str(tmp_path / "o4")])
    assert res.exit_code == 2 and "escapes the dataset root" in res.output


def test_box_checks_skip_on_classification_data(tmp_path):
    from auditor.pipeline.api import scan

    for i, (_n, rgb) in enumerate(synth.random_crops(6, 64, seed=3)):
        synth.write(tmp_path / "d" / "cat" / f"{i}.jpg", synth.jpeg_bytes(rgb))
    result = scan(tmp_path / "d", tmp_path / "r", embed=False, cache_dir=tmp_path / "c")
    assert result.report["boxes"] is None
    assert result.report["checks"]["box_tiny"]["skipped"].startswith("not a detection dataset")


@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_clean_writes_annotations_without_invalid_boxes(tmp_path, fmt):
    from auditor.pipeline.clean import clean

    root = tmp_path / fmt
    (make_coco if fmt == "coco" else make_yolo)(root)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    result = clean(root, tmp_path / "clean", embed=False, cache_dir=tmp_path / "c")
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # original untouched
    boxes = result.boxes
    dropped = boxes[boxes["action"] == "drop"]
    reasons = " ".join(dropped["reason"])
    for check in ("box_degenerate", "box_duplicate", "box_unknown_category"):
        assert check in reasons
    quarantined = result.manifest[result.manifest["action"] == "quarantine"]
    assert len(quarantined) == 1 and "004" in quarantined["source_path"].iloc[0]  # box_label_conflict: a person decides
    assert "box_label_conflict" in quarantined["reason"].iloc[0]
    assert (boxes.loc[boxes["path"] == quarantined["source_path"].iloc[0], "action"] == "drop").all()
    clipped = boxes[boxes["action"] == "clip"]
    assert len(clipped) == 1 and "box_out_of_bounds" in clipped["reason"].iloc[0]
    out = tmp_path / "clean"
    assert (out / "boxes.csv").exists() and (out / "manifest.csv").exists()
    from auditor.pipeline.api import scan

    again = scan(out, tmp_path / "r2", embed=False, cache_dir=tmp_path / "c")
    left = {f.check for f in again.findings}
    assert not left & {"box_degenerate", "box_duplicate", "box_unknown_category", "box_label_conflict",
                       "box_out_of_bounds", "box_missing_image"}  # fmt: skip
    assert again.report["boxes"]["format"] == fmt
    kept = int((boxes["action"].isin(["keep", "clip"])).sum())
    assert again.report["boxes"]["boxes"] == kept


def _coco(root, images, anns, name="instances_train.json", cats=None):
    cats = cats or [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    synth.write(root / name, json.dumps({"images": images, "annotations": anns, "categories": cats}).encode())


def test_coco_quirks_become_findings_not_crashes(tmp_path):
    """Repeated annotation ids, crowd regions, polygon-only annotations, float category ids,
    a zero declared width, backslash paths, an image listed in train and val, and an image
    resized after annotation."""
    from auditor.pipeline.api import scan
    from auditor.pipeline.clean import clean

    root = tmp_path / "c"
    scenes_ = synth.detection_scenes(4, SIZE, seed=5)
    for i, (img, _) in enumerate(scenes_):
        synth.write(root / "imgs" / "sub" / f"{i}.jpg", synth.jpeg_bytes(img, 92))
    small = synth.detection_scenes(1, 80, seed=6)[0][0]
    synth.write(root / "imgs" / "sub" / "resized.jpg", synth.jpeg_bytes(small, 92))
    images = [{"id": i, "file_name": f"imgs\\sub\\{i}.jpg", "width": SIZE, "height": SIZE} for i in range(3)]
    images.append({"id": 9, "file_name": "imgs/sub/resized.jpg", "width": SIZE, "height": SIZE})
    images[2]["width"] = 0  # unknown: the measured size is used
    anns = [
        {"id": 7, "image_id": 0, "category_id": 1, "bbox": [10, 10, 40, 40]},
        {"id": 7, "image_id": 0, "category_id": 2, "bbox": [90, 90, 0, 20]},  # same id, degenerate
        {"id": 8, "image_id": 1, "category_id": 1.0, "bbox": [10, 10, 60, 60], "iscrowd": 1},
        {"id": 9, "image_id": 1, "category_id": 1, "bbox": [11, 10, 60, 60]},  # inside the crowd region
        {"id": 10, "image_id": 2, "category_id": 2, "segmentation": [[20, 20, 60, 20, 60, 70, 20, 70]]},
        {"id": 11, "image_id": 9, "category_id": 1, "bbox": [100, 100, 40, 40]},
    ]
    _coco(root, images, anns)
    _coco(
        root,
        [{"id": 1, "file_name": "imgs/sub/3.jpg"}, {"id": 2, "file_name": "imgs/sub/0.jpg"}],
        [{"id": 1, "image_id": 1, "category_id": 2, "bbox": [5, 5, 30, 30]}],
        name="instances_val.json",
    )
    result = scan(root, tmp_path / "r", embed=False, cache_dir=tmp_path / "cache")
    found = _by_check(result)
    assert [f.details["box_id"] for f in found["box_degenerate"]] == ["instances_train.json: annotations[1]"]
    assert "box_duplicate" not in found and "box_unknown_category" not in found  # crowd; 1.0 is the id 1
    poly = result.discovery.annotations.boxes.set_index("box_id").loc["instances_train.json: annotations[4]"]
    assert (poly["x"], poly["y"], poly["w"], poly["h"]) == (20, 20, 40, 50)
    leak = [f for f in found["leakage"] if f.details.get("evidence") == "same file"]
    assert [f.paths for f in leak] == [["imgs/sub/0.jpg"]] and leak[0].details["splits"] == ["train", "val"]
    mismatch = found["box_image_size_mismatch"]
    assert [f.paths for f in mismatch] == [["imgs/sub/resized.jpg"]] and "stale" in mismatch[0].message
    assert (tmp_path / "r" / "report.html").exists()
    cleaned = clean(root, tmp_path / "clean", embed=False, cache_dir=tmp_path / "cache")
    doc = json.loads((tmp_path / "clean" / "instances_train.json").read_text())
    kept = [a["bbox"] for a in doc["annotations"] if a["image_id"] == 0]
    assert kept == [[10, 10, 40, 40]]  # the good box with the repeated id survives
    assert cleaned.boxes["box_id"].is_unique


def test_yolo_quirks(tmp_path):
    """A BOM, classes.txt inside labels/ (LabelImg), a root whose name contains 'test', two
    images sharing one label file, a polygon line, and a label file linked from outside."""
    from auditor.pipeline.api import scan

    root = tmp_path / "my_test_yolo"
    img = synth.detection_scenes(1, 64, seed=3)[0][0]
    for name in ("a.jpg", "b.jpg", "b.png", "c.jpg"):
        synth.write(root / "images" / name, synth.jpeg_bytes(img) if name.endswith("jpg") else synth.png_bytes(img))
    synth.write(root / "labels" / "classes.txt", "\ufeffcat\ndog\n".encode())
    synth.write(root / "labels" / "a.txt", "\ufeff0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.3 0.1 0.3 0.3 0.1 0.3\n".encode())
    synth.write(root / "labels" / "b.txt", b"1 0.5 0.5 0.2 0.2\n")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("0 0.5 0.5 0.2 0.2\n")
    (root / "labels" / "c.txt").symlink_to(outside)
    result = scan(root, tmp_path / "r", embed=False, cache_dir=tmp_path / "cache")
    ann = result.discovery.annotations
    assert ann.categories == {"0": "cat", "1": "dog"} and ann.names_known
    assert set(ann.images["split"].dropna()) == set()  # 'test' in the root's name is not a split
    assert sorted(ann.boxes["category"]) == ["cat", "dog", "dog"]
    b = ann.boxes.set_index("box_id")
    assert b.loc["labels/a.txt:2", ["x", "y", "w", "h"]].tolist() == pytest.approx([0.2, 0.2, 0.2, 0.2])
    assert (ann.boxes["where"] == "labels/b.txt:1").sum() == 1  # b.jpg and b.png share it: counted once
    unannotated = {f.paths[0] for f in result.findings if f.check == "box_unannotated_image"}
    assert unannotated == {"images/b.png", "images/c.jpg"}  # c's label file leaves the dataset: not read


def test_cli_clean_prints_box_decisions(tmp_path):
    from typer.testing import CliRunner

    from auditor.cli.app import app

    make_coco(tmp_path / "coco")
    res = CliRunner().invoke(app, ["clean", str(tmp_path / "coco"), "--out", str(tmp_path / "clean"), "--no-embed",
                                   "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Boxes: keep" in res.output and "clip 1" in res.output and "boxes.csv" in res.output
    assert (tmp_path / "clean" / "annotations" / "instances_train.json").exists()


def test_audit_run_on_a_detection_dataset_cleans_and_skips_finetuning(tmp_path):
    from auditor.pipeline.run import run

    make_coco(tmp_path / "coco")
    result = run(tmp_path / "coco", tmp_path / "run", force=True, embed=False, cache_dir=tmp_path / "c")
    assert result.finetune is None and "detection dataset" in result.skipped
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["clean"]["boxes"]["clip"] == 1 and report["run"]["finetune_skipped"]
    assert "fine-tuning skipped" in (tmp_path / "run" / "report.html").read_text()
    assert (tmp_path / "run" / "clean" / "annotations" / "instances_val.json").exists()
