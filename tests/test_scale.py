"""Bounded memory at scale (issue 17): the per-image table built a chunk at a time, the
embeddings kept on disk and read in blocks, the approximate kNN graph above a size."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import measured_mixed_files


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
    from auditor.pipeline import api

    names, measured = measured_mixed_files(tmp_path)
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


def test_spawned_measure_workers_measure_what_forked_ones_do(tmp_path, monkeypatch):
    """Above SPAWN_ABOVE files the scan's measure workers are new interpreters, not forks of
    the scan (a fork maps the scan's whole heap); they load the compiled kernels themselves and
    give the same results, undecodable files included."""
    import json

    from auditor.demo import synth
    from auditor.io.store import Store
    from auditor.measure import batch

    rng = np.random.default_rng(0)
    for i in range(80):  # two chunks of 40, each enough for the pool (4 tasks); a truncated and an empty file
        data = synth.png_bytes((rng.random((20 + i, 30 + i % 7, 3)) * 255).astype(np.uint8))
        synth.write(tmp_path / f"f{i:02d}.png", data[:60] if i == 7 else b"" if i == 9 else data)
    paths = sorted(str(p) for p in tmp_path.glob("*.png"))
    started = []

    def pool(workers, spawn=False, _pool=batch._pool):
        started.append(spawn)
        return _pool(workers, spawn)

    monkeypatch.setattr(batch, "_pool", pool)

    def measured(spawn_above: int) -> str:
        monkeypatch.setattr(batch, "SPAWN_ABOVE", spawn_above)
        with Store(tmp_path / f"cache{spawn_above}") as store:
            got = {p: r for _, chunk in batch.measure_chunks(paths, store, 40, workers=2) for p, r in chunk.items()}
        return json.dumps(got, sort_keys=True, default=str)

    forked = measured(len(paths))
    assert started == [False]
    spawned = measured(len(paths) - 1)
    assert started == [False, True]
    assert spawned == forked and '"hash"' not in forked  # (results, not an error message)


def test_disk_matrix_reads_back_the_float16_rows_as_float32(tmp_path):
    from auditor.embed.blocks import DiskMatrix, RowSubset, iter_blocks

    x = np.random.default_rng(0).normal(size=(1000, 40)).astype(np.float32)
    want = x.astype(np.float16).astype(np.float32)
    m = DiskMatrix(40, tmp_path)
    for start in range(0, 1000, 300):  # appended in pieces, as arrays and as bytes
        part = x[start : start + 300]
        m.append(part if start % 600 else part.astype(np.float16).tobytes())
    assert m.shape == (1000, 40) and len(m) == 1000 and list(tmp_path.iterdir()) == []  # an unnamed file
    assert np.array_equal(np.asarray(m), want) and np.asarray(m).dtype == np.float32
    rows = np.array([999, 3, 3, 500])
    assert np.array_equal(m[rows], want[rows]) and np.array_equal(m[5], want[5])
    assert np.array_equal(m[want[:, 0] > 0], want[want[:, 0] > 0])
    assert np.array_equal(np.concatenate(list(m.blocks(size=64))), want)
    assert np.array_equal(np.concatenate(list(m.blocks(rows, size=3))), want[rows])
    cols = m.columns(10, 25)
    assert cols.shape == (1000, 15) and np.array_equal(cols[rows], want[rows, 10:25])
    assert np.array_equal(np.asarray(cols.columns(5)), want[:, 15:25])
    sub = RowSubset(cols, rows)
    assert len(sub) == 4 and np.array_equal(np.concatenate(list(sub.blocks(size=3))), want[rows, 10:25])
    assert np.array_equal(np.concatenate(list(iter_blocks(want, rows, 2))), want[rows])
    with pytest.raises(ValueError):
        m.append(b"\0" * 6)


def test_embeddings_gathered_on_disk_equal_the_store_rows(monkeypatch):
    """embed_files' result: the store's float16 vectors (and ImageNet head outputs) of the
    hashes it has, in order, read back from disk a chunk at a time."""
    from auditor.embed import features
    from auditor.io.store import Store

    rng = np.random.default_rng(1)
    hashes = [f"{i:04d}" for i in range(50)]
    vec = rng.normal(size=(50, 16)).astype(np.float16)
    extra = rng.random((50, 1000 + 6)).astype(np.float16)
    backbone = SimpleNamespace(has_head=True, dims=16, to_dict=lambda: {"id": "fake", "dims": 16})
    with Store(None) as store:
        store.put_embeddings([(h, vec[i].tobytes(), extra[i].tobytes()) for i, h in enumerate(hashes) if i % 7], "k")
        monkeypatch.setattr(features, "_bn_layout", lambda b, e: ([("l", 3)], {}))
        emb = features._assemble(backbone, hashes, store, "k", {}, None, computed=0, chunk=8)
        have = [i for i in range(50) if i % 7]
        assert emb.hashes == [hashes[i] for i in have]
        assert np.array_equal(np.asarray(emb.vectors), vec[have].astype(np.float32))
        assert np.array_equal(np.asarray(emb.probs), extra[have, :1000].astype(np.float32))
        assert np.array_equal(np.asarray(emb.bn_stats), extra[have, 1000:].astype(np.float32))
        got, mask = emb.rows(["0003", "0007", None, "0048"])
        assert mask.tolist() == [True, False, False, True]
        assert np.array_equal(got[[0, 3]], vec[[3, 48]].astype(np.float32)) and not got[1:3].any()
        # one row without head outputs: no probabilities for any
        store.put_embeddings([("0000", vec[0].tobytes(), None)], "k")
        emb = features._assemble(backbone, hashes, store, "k", {}, None, computed=0, chunk=8)
        assert emb.probs is None and emb.bn_stats is None and len(emb.hashes) == 43


def test_pretraining_gap_in_blocks_is_the_gap_of_the_whole_array():
    from auditor.analysis.pretraining import pretraining_gap
    from auditor.embed import blocks

    rng = np.random.default_rng(2)
    layers = [("a", 5), ("b", 7)]
    ref = {"a": (rng.random(5), rng.random(5) + 0.5), "b": (rng.random(7), rng.random(7) + 0.5)}
    stats = rng.random((9000, 24)).astype(np.float16).astype(np.float32)
    probs = rng.dirichlet(np.ones(1000), 9000).astype(np.float16).astype(np.float32)
    want = pretraining_gap(stats, layers, ref, probs)
    m, p = blocks.DiskMatrix(24), blocks.DiskMatrix(1000)
    m.append(stats)
    p.append(probs)
    rows = np.arange(9000)
    assert pretraining_gap(blocks.RowSubset(m, rows), layers, ref, blocks.RowSubset(p, rows)) == want
    odd = rows[::3]
    assert pretraining_gap(blocks.RowSubset(m, odd), layers, ref, blocks.RowSubset(p, odd)) == pretraining_gap(
        stats[odd], layers, ref, probs[odd])  # fmt: skip


def test_label_probabilities_above_the_fit_cap():
    """Above FIT_CAP each fold is fitted on a stratified sample; every row still gets
    out-of-fold probabilities, the same ones on a rerun, and they still find the labels."""
    from auditor.analysis.labels import out_of_fold_probabilities

    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, 32)) * 3
    y = np.repeat(np.arange(4), [300, 200, 100, 12])
    x = (centres[y] + rng.normal(size=(len(y), 32))).astype(np.float32)
    full = out_of_fold_probabilities(x, y, 5, 0.1)
    capped = out_of_fold_probabilities(x, y, 5, 0.1, fit_cap=150)
    assert capped.shape == full.shape == (612, 4)
    assert np.allclose(capped.sum(axis=1), 1.0)
    assert np.array_equal(capped, out_of_fold_probabilities(x, y, 5, 0.1, fit_cap=150))
    assert (capped.argmax(axis=1) == y).mean() > 0.95 and (full.argmax(axis=1) == y).mean() > 0.95


def test_depth_features_read_from_disk_equal_the_columns_of_the_array(tmp_path):
    """label_issue's BatchNorm features: the middle layers' means and standard deviations (not
    the head, not the narrow early layers), read from the DiskMatrix a block at a time, are
    the same numbers as those columns of the array; the capped fit on them (unit=False) gives
    the same probabilities as on the array, and fits wider rows on fewer of them."""
    from auditor.analysis import labels
    from auditor.embed import blocks
    from auditor.embed.features import Embeddings

    layers = [("stem_bn", 8), ("a", 64), ("b", 96), ("head_bn", 128)]
    total = sum(c for _, c in layers)
    rng = np.random.default_rng(5)
    stats = rng.normal(size=(700, 2 * total)).astype(np.float16).astype(np.float32)
    disk = blocks.DiskMatrix(2 * total, tmp_path)
    disk.append(stats)
    hashes = [f"h{i}" for i in range(700)]
    asked = pd.Series(hashes[::-1][:500])  # another order, a subset
    rows = np.arange(699, 199, -1)
    want = np.hstack([stats[rows][:, 8:168], stats[rows][:, total + 8 : total + 168]])
    for matrix in (stats, disk):
        emb = Embeddings({"id": "x"}, hashes, np.zeros((700, 4), np.float32), bn_stats=matrix, stat_layers=layers)
        got = labels.depth_features(emb, asked)
        assert got.shape == (500, 320) and np.array_equal(got[:], want)
        assert np.array_equal(got[np.array([3, 1])], want[[3, 1]])
    assert labels.depth_features(Embeddings({"id": "x"}, hashes, np.zeros((700, 4))), asked) is None
    y = np.repeat(np.arange(4), 125)
    on_disk = labels.out_of_fold_probabilities(got, y, 5, 0.01, fit_cap=300, unit=False)
    in_memory = labels.out_of_fold_probabilities(want, y, 5, 0.01, fit_cap=300, unit=False)
    assert np.array_equal(on_disk, in_memory)
    disk.close()


def test_approximate_knn_finds_the_exact_graph_on_a_small_set(monkeypatch):
    """Forced above EXACT_LIMIT, the pynndescent graph gives the same similar pairs (the
    near-duplicate candidates) and nearly every exact neighbour."""
    from auditor.embed import neighbors

    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 24)).astype(np.float32)
    x[500:] = x[:100] + 0.05 * rng.normal(size=(100, 24)).astype(np.float32)  # 100 planted near copies
    exact_i, exact_s = neighbors.knn(x, 10)
    monkeypatch.setattr(neighbors, "EXACT_LIMIT", 100)
    approx_i, approx_s = neighbors.knn(x, 10)
    assert neighbors.recall(approx_i, exact_i) >= 0.97
    want = neighbors.similar_pairs(exact_i, exact_s, 0.95)[0]
    got = neighbors.similar_pairs(approx_i, approx_s, 0.95)[0]
    assert len(want) == 100 and np.array_equal(got, want)
    again = neighbors.knn(x, 10)
    assert np.array_equal(again[0], approx_i)  # seeded: the same graph every time


def _embedded_context(n: int, dims: int, seed: int, classes: int = 3):
    """A check context of ``n`` decoded, labeled images whose embeddings (float16-exact, some
    exact copies: tied similarities) are in a DiskMatrix, as a scan holds them."""
    from auditor.core.context import CheckContext
    from auditor.embed.blocks import DiskMatrix
    from auditor.embed.features import Embeddings

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dims)) * 2
    y = rng.integers(0, classes, n)
    x = (centres[y] + rng.normal(size=(n, dims))).astype(np.float16)
    x[n // 2 : n // 2 + 20] = x[:20]  # exact copies
    matrix = DiskMatrix(dims)
    matrix.append(x[::-1])  # the matrix's row order is not the table's
    hashes = [f"h{i:05d}" for i in range(n)][::-1]
    table = pd.DataFrame({"path": [f"train/c{c}/{i}.png" for i, c in enumerate(y)], "label": [f"c{c}" for c in y],
                          "split": "train", "ok": True, "content_hash": [f"h{i:05d}" for i in range(n)]})  # fmt: skip
    emb = Embeddings(backbone={"id": "fake"}, hashes=hashes, vectors=matrix)
    return CheckContext(table=table, embeddings=emb), x.astype(np.float32)


def test_knn_graph_from_blocks_equals_the_graph_of_the_whole_matrix(monkeypatch):
    """ok_knn scales the rows to unit length a block at a time from the DiskMatrix (not the
    whole float32 matrix beside its unit copy): the same bits, the same graph."""
    from auditor.embed import neighbors

    monkeypatch.setattr(neighbors, "BLOCK_ROWS", 700)  # five blocks, the last one short
    ctx, x = _embedded_context(3000, 24, 5)
    unit, mask = neighbors._unit_ok_rows(ctx)
    assert mask.all() and np.array_equal(unit, neighbors.normalize(x))
    got = neighbors.ok_knn(ctx, 10)
    want = neighbors.knn(ctx.ok_vectors()[0], 10)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    ctx.analyses.knn = None  # with the vectors already held: the same again
    again = neighbors.ok_knn(ctx, 10)
    assert np.array_equal(again[0], want[0]) and np.array_equal(again[1], want[1])


def test_label_vote_on_the_scan_graph_equals_its_own_graph(monkeypatch):
    """Above EXACT_LIMIT the label vote takes the scan's kNN graph (same rows, same unit
    vectors, same pynndescent build): the same probabilities as building its own."""
    from auditor.analysis import labels
    from auditor.embed import neighbors

    monkeypatch.setattr(neighbors, "EXACT_LIMIT", 200)
    params = {"folds": 3, "min_class_images": 5, "regularization": 0.1, "neighbours": 10, "neighbour_weight": 0.5}
    ctx, _ = _embedded_context(900, 16, 6)
    neighbors.ok_knn(ctx, 5)  # a check asked for the graph first, with a smaller k
    reused = labels._label_probabilities(ctx, params)
    assert ctx.analyses.knn[0].shape[1] == 10
    monkeypatch.setattr(labels, "_scan_graph", lambda *a: None)
    own = labels._label_probabilities(ctx, params)
    assert np.array_equal(reused.probs, own.probs) and np.array_equal(reused.quality, own.quality)


def test_support_distances_equal_the_knn_path():
    """drift.support's nearest similarities from the block maximum: the same numbers knn(xn, 1)
    and cross_nearest(yn, xn, 1) gave (with exact ties: copies in the reference)."""
    from auditor.analysis import drift
    from auditor.embed import neighbors

    rng = np.random.default_rng(7)
    x = rng.normal(size=(2500, 32)).astype(np.float16).astype(np.float32)
    x[1000:1100] = x[:100]
    y = rng.normal(size=(700, 32)).astype(np.float16).astype(np.float32) + 0.2
    y[:50] = x[200:250]
    got = drift.support(x, y)
    xn, yn = neighbors.normalize(x), neighbors.normalize(y)
    ref = 1.0 - neighbors.knn(xn, 1)[1][:, 0].astype(np.float64)
    tgt = 1.0 - neighbors.cross_nearest(yn, xn, 1)[1][:, 0].astype(np.float64)
    assert np.array_equal(got.reference_distance, ref) and np.array_equal(got.target_distance, tgt)


def test_projection_reads_the_drawn_rows_alone(monkeypatch):
    """project_pairs draws its rows first and reads only those: the same vectors, in the same
    order, as reading every row of a side and then drawing."""
    from auditor.analysis import drift, projection, shift

    ctx, _ = _embedded_context(1200, 16, 8)
    ctx.table["split"] = np.where(np.arange(1200) % 4 == 0, "val", "train")
    ctx.analyses.shift = {p.key: {"embedding": {}} for p in shift.pairs(ctx)}
    seen = []
    monkeypatch.setattr(projection, "cached_project", lambda v, seed, store: (seen.append(v), (v[:, :2], "fake"))[1])
    frame = projection.project_pairs(ctx, max_per_group=500)
    rng = np.random.default_rng(0)
    want = []
    for split in ("train", "val"):
        rows = ctx.ok[ctx.ok["split"] == split]
        v, mask = ctx.embeddings.rows(rows["content_hash"])
        want.append(v[mask][drift.subsample(int(mask.sum()), 500, rng)])
    assert len(frame) == 800 and np.array_equal(seen[0], np.vstack(want))
