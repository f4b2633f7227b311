"""Bounded memory at scale (issue 17): the per-image table built a chunk at a time, the
embeddings kept on disk and read in blocks, the approximate kNN graph above a size."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

from auditor.demo import synth


def _rowwise(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows)


def test_measured_columns_equal_one_frame_of_all_rows():
    """Every mix of kinds across chunks (a column missing from a chunk, ints then None, text
    then NaN, text and numbers, a 64-bit int past int64) gives what pd.DataFrame(rows) gives."""
    from auditor.pipeline.columns import MeasuredColumns

    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        r: dict = {"a": float(rng.random()), "w": int(rng.integers(1, 500)), "ok": bool(i % 3)}
        if i % 7:
            r["fmt"] = ["PNG", "JPEG"][i % 2]
        if i >= 20:
            r["late"] = i  # a column that only later chunks have
        if i % 11 == 0:
            r["q"] = None
        elif i % 5 == 0:
            r["q"] = 90
        if i == 33:
            r["big"] = 2**64 - 1
        elif i > 40:
            r["big"] = 5
        if 10 <= i < 20:
            r["name"] = "x" if i % 2 else 3  # text and numbers in one column: objects
        rows.append(r)
    want = _rowwise(rows)
    for size in (1, 2, 7, 20, 60):
        cols = MeasuredColumns()
        for start in range(0, len(rows), size):
            cols.add(rows[start : start + size])
        got = cols.frame()
        pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert MeasuredColumns().frame().shape == (0, 0)


def test_table_built_in_chunks_equals_the_table_built_at_once(tmp_path, monkeypatch):
    """The scan measures and adds its files a chunk at a time (MEASURE_CHUNK); decoded,
    undecodable and missing files in any order give the table build_table gives at once."""
    from auditor.io.store import Store
    from auditor.measure.batch import measure_all
    from auditor.pipeline import api

    files = {f"ok{i}.png": synth.png_bytes((np.random.default_rng(i).random((20 + i, 30, 3)) * 255).astype(np.uint8))
             for i in range(3)}  # fmt: skip
    files["q.jpg"] = synth.jpeg_bytes(np.full((30, 40, 3), 90, np.uint8), 80)
    files["cut.png"] = files["ok0.png"][:60]
    files["empty.png"] = b""
    for name, data in files.items():
        synth.write(tmp_path / name, data)
    with Store(None) as store:
        measured = measure_all([str(tmp_path / n) for n in files], store, workers=1)
    names = list(files)
    for order in (names, names[::-1], names[4:] + names[:4]):
        for gone in ([], ["gone0.png"], ["gone0.png", "gone1.png", "gone2.png"]):
            entries = list(order)
            for j, g in enumerate(gone):
                entries.insert((3 * j) % (len(entries) + 1), g)
            items = pd.DataFrame({"path": entries, "abs_path": [str(tmp_path / e) for e in entries],
                                  "split": ["train"] * len(entries), "label": ["a"] * len(entries),
                                  "ext": [Path(e).suffix for e in entries]})  # fmt: skip
            disc = SimpleNamespace(items=items, missing=gone, missing_mask=lambda items=items, gone=gone: items[
                "path"].isin(gone).to_numpy())  # fmt: skip
            want = api.build_table(disc, measured)
            for size in (1, 2, 4):
                builder = api.TableBuilder(disc)
                paths = builder.present_paths
                for start in range(0, len(paths), size):
                    builder.add([measured[p] for p in paths[start : start + size]])
                got = builder.table()
                pd.testing.assert_frame_equal(got, want, check_exact=True)
                for col in api.HASH_COLUMNS:
                    assert [type(v) for v in got[col]] == [type(v) for v in want[col]]
