import multiprocessing
import os

import pytest

from auditor.demo import synth
from auditor.io.store import Store
from auditor.measure import batch as extract
from auditor.measure.pixels import MEASURE_VERSION


def _files(tmp_path, tiles, n=6):
    paths = []
    for i in range(n):
        paths.append(str(synth.write(tmp_path / f"{i}.jpg", synth.jpeg_bytes(tiles[i][1]))))
    return paths


def test_rescan_uses_cache_and_changed_file_is_measured_again(tmp_path, tiles, monkeypatch):
    paths = _files(tmp_path, tiles)
    calls = []
    real = extract.measure_file
    monkeypatch.setattr(extract, "measure_file", lambda p, o=extract.DEFAULT_OPTIONS: calls.append(p) or real(p, o))
    with Store(tmp_path / "cache.sqlite3") as store:
        first = extract.measure_all(paths, store, workers=1)
        assert len(calls) == len(paths)
        calls.clear()
        second = extract.measure_all(paths, store, workers=1)
        assert calls == []
        assert first == second
        # change one file (content and mtime): only it is measured again
        synth.write(tmp_path / "0.jpg", synth.jpeg_bytes(tiles[10][1]))
        os.utime(paths[0], ns=(1, 1))
        third = extract.measure_all(paths, store, workers=1)
        assert calls == [paths[0]]
        assert third[paths[0]][0] != first[paths[0]][0]


def test_interrupted_scan_leaves_store_consistent(tmp_path, tiles):
    paths = _files(tmp_path, tiles, 10)
    seen = []

    def boom(n):
        seen.append(n)
        if len(seen) == 7:
            raise KeyboardInterrupt

    with Store(tmp_path / "cache.sqlite3") as store:
        with pytest.raises(KeyboardInterrupt):
            extract.measure_all(paths, store, workers=1, progress=boom, batch_size=3)
        committed = store.count("measurements")
        assert committed == 6  # two whole batches of 3; the third batch was never written
        assert store.count("files") == committed
    with Store(tmp_path / "cache.sqlite3") as store:  # reopen: usable, and finishes the job
        results = extract.measure_all(paths, store, workers=1)
        assert len(results) == 10 and store.count("measurements") == 10
        assert all("sharpness" in props for _, props in results.values())


def test_thumbnails_are_stored(tmp_path, tiles):
    paths = _files(tmp_path, tiles, 2)
    with Store(None) as store:
        res = extract.measure_all(paths, store, workers=1)
        thumbs = dict(store.thumbnails([h for h, _ in res.values()], MEASURE_VERSION))
        assert len(thumbs) == 2 and all(t[:3] == b"\xff\xd8\xff" for t in thumbs.values())


def test_parallel_equals_serial(tmp_path, tiles):
    paths = _files(tmp_path, tiles, 40)
    with Store(None) as s1, Store(None) as s2:
        assert extract.measure_all(paths, s1, workers=1) == extract.measure_all(paths, s2, workers=2)


def test_a_file_that_kills_its_worker_becomes_a_finding(tmp_path, tiles, monkeypatch):
    paths = _files(tmp_path, tiles, 40)
    poison = paths[17]
    real = extract.measure_file

    def crashing(p, o=extract.DEFAULT_OPTIONS):
        if p == poison:
            os._exit(3)  # what a segfault in a native decoder looks like to the pool
        return real(p, o)

    monkeypatch.setattr(extract, "measure_file", crashing)  # fork start: children inherit it
    monkeypatch.setattr(extract, "_mp_context", lambda spawn=False: multiprocessing.get_context("fork"))
    with Store(None) as store:
        res = extract.measure_all(paths, store, workers=2)
    assert res[poison][1]["error_kind"] == "decoder_crash"
    assert all("sharpness" in res[p][1] for p in paths if p != poison)


def _many_files(tmp_path, tiles, n):
    return [str(synth.write(tmp_path / f"{i}.jpg", synth.jpeg_bytes(tiles[i % len(tiles)][1]))) for i in range(n)]


def test_chunks_are_measured_by_one_pool_started_once(tmp_path, tiles, monkeypatch):
    """measure_chunks forks its workers once for every chunk: a pool forked per chunk maps the
    parent's heap as it has grown by then (the table of the chunks before), once per worker."""
    paths = _many_files(tmp_path, tiles, 100)
    started = []
    real_pool = extract._pool
    monkeypatch.setattr(extract, "_pool",
                        lambda workers, spawn=False: started.append(workers) or real_pool(workers, spawn))  # fmt: skip
    monkeypatch.setattr(extract, "_mp_context", lambda spawn=False: multiprocessing.get_context("fork"))
    with Store(None) as s1, Store(None) as s2:
        want = extract.measure_all(paths, s1, workers=1)
        got = list(extract.measure_chunks(paths, s2, 40, workers=2))
    assert started == [2]
    assert [list(part) for part, _ in got] == [paths[:40], paths[40:80], paths[80:]]
    assert {p: r for _, res in got for p, r in res.items()} == want


def test_a_worker_killed_in_a_later_chunk_replaces_the_pool(tmp_path, tiles, monkeypatch):
    paths = _many_files(tmp_path, tiles, 120)
    poison = paths[57]  # in the second chunk of 40
    real = extract.measure_file

    def crashing(p, o=extract.DEFAULT_OPTIONS):
        if p == poison:
            os._exit(3)
        return real(p, o)

    monkeypatch.setattr(extract, "measure_file", crashing)
    monkeypatch.setattr(extract, "_mp_context", lambda spawn=False: multiprocessing.get_context("fork"))
    with Store(None) as store:
        res = {p: r for _, got in extract.measure_chunks(paths, store, 40, workers=2) for p, r in got.items()}
    assert set(res) == set(paths)
    assert res[poison][1]["error_kind"] == "decoder_crash"
    assert all("sharpness" in res[p][1] for p in paths if p != poison)


def test_projection_is_cached_by_its_input(tmp_path, monkeypatch):
    """An unchanged rescan does not run UMAP again: the projection of the same vectors and
    seed comes from the store; other vectors or another seed are computed."""
    import numpy as np

    from auditor.analysis import projection
    from auditor.io.store import Store

    calls = []
    real = projection.project

    def counting(vectors, seed=0):
        calls.append(seed)
        return real(vectors, seed)

    monkeypatch.setattr(projection, "project", counting)
    v = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    with Store(tmp_path / "s.sqlite3") as store:
        a, ma = projection.cached_project(v, 0, store)
        b, mb = projection.cached_project(v.copy(), 0, store)
        assert len(calls) == 1 and ma == mb and np.array_equal(a, b)
        projection.cached_project(v, 1, store)
        projection.cached_project(v[:-1], 0, store)
        assert len(calls) == 3
