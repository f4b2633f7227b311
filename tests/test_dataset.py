import os

import pytest

from auditor.demo import synth
from auditor.io.dataset import DatasetError, discover


def _img(path, tile, fmt="jpg"):
    return synth.write(path, synth.jpeg_bytes(tile) if fmt == "jpg" else synth.png_bytes(tile))


def test_class_folders(tmp_path, tiles):
    _img(tmp_path / "cat" / "a.jpg", tiles[0][1])
    _img(tmp_path / "dog" / "sub" / "b.jpg", tiles[1][1])
    d = discover(tmp_path)
    assert d.layout == "class-folders"
    assert dict(zip(d.items.path, d.items.label, strict=True)) == {"cat/a.jpg": "cat", "dog/sub/b.jpg": "dog"}
    assert d.items.split.isna().all()


def test_split_folders_and_skips(tmp_path, tiles):
    for split in ("train", "validation", "test"):
        _img(tmp_path / split / "cat" / f"{split}.jpg", tiles[0][1])
    (tmp_path / "train" / "cat" / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "x.jpg").write_bytes(b"x")
    (tmp_path / "train" / "notes.txt").write_text("hello")
    d = discover(tmp_path)
    assert d.layout == "split-folders"
    assert sorted(d.items.split) == ["test", "train", "validation"]
    assert set(d.items.label) == {"cat"}
    assert d.skipped["hidden"] == 2 and d.skipped["not_an_image"] == 1


def test_flat_and_magic_bytes_without_extension(tmp_path, tiles):
    _img(tmp_path / "a.png", tiles[0][1], "png")
    synth.write(tmp_path / "no_extension", synth.png_bytes(tiles[1][1]))
    d = discover(tmp_path)
    assert d.layout == "flat"
    assert sorted(d.items.path) == ["a.png", "no_extension"]
    assert d.items.label.isna().all()


def test_manifest_layout(tmp_path, tiles):
    _img(tmp_path / "imgs" / "1.jpg", tiles[0][1])
    _img(tmp_path / "imgs" / "2.jpg", tiles[1][1])
    m = tmp_path / "labels.csv"
    m.write_text("path,label,split\nimgs/1.jpg,cat,train\nimgs/2.jpg,dog,val\nimgs/3.jpg,dog,val\n")
    d = discover(tmp_path, manifest=m)
    assert d.layout == "manifest"
    assert list(d.items.label) == ["cat", "dog", "dog"]
    assert d.missing == ["imgs/3.jpg"]


@pytest.mark.parametrize("bad", ["../outside.jpg", "/etc/passwd", "a/../../b.jpg", "C:/x.jpg"])
def test_manifest_paths_cannot_escape_root(tmp_path, bad):
    root = tmp_path / "ds"
    root.mkdir()
    m = tmp_path / "m.csv"
    m.write_text(f"path,label\n{bad},x\n")
    with pytest.raises(DatasetError, match="escapes|outside"):
        discover(root, manifest=m)


def test_manifest_symlink_escape_refused(tmp_path, tiles):
    root = tmp_path / "ds"
    root.mkdir()
    _img(tmp_path / "secret.jpg", tiles[0][1])
    os.symlink(tmp_path / "secret.jpg", root / "link.jpg")
    m = tmp_path / "m.csv"
    m.write_text("path,label\nlink.jpg,x\n")
    with pytest.raises(DatasetError, match="outside"):
        discover(root, manifest=m)


def test_symlinks_leaving_root_not_followed_unless_asked(tmp_path, tiles):
    root = tmp_path / "ds"
    _img(root / "cat" / "a.jpg", tiles[0][1])
    outside = tmp_path / "elsewhere"
    _img(outside / "b.jpg", tiles[1][1])
    os.symlink(outside, root / "dog")
    os.symlink(outside / "b.jpg", root / "cat" / "b.jpg")
    os.symlink(root, root / "cat" / "loop")  # a loop must not hang
    d = discover(root)
    assert list(d.items.path) == ["cat/a.jpg"]
    assert d.skipped["symlink_outside_root"] == 2
    d2 = discover(root, follow_symlinks=True)
    assert sorted(d2.items.path) == ["cat/a.jpg", "cat/b.jpg", "dog/b.jpg"]


def test_missing_and_empty_dataset(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images"):
        discover(tmp_path / "empty")


def test_names_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    good = synth.jpeg_bytes(synth.load_photo("coffee")[:64, :64], 90)
    for i in range(2):
        synth.write(tmp_path / f"ok{i}.jpg", good)
    with open(os.path.join(os.fsencode(tmp_path), b"bad\xff.jpg"), "wb") as fh:
        fh.write(good)
    disc = discover(tmp_path)
    assert len(disc.items) == 2
    assert disc.skipped.get("non_utf8_name") == 1
