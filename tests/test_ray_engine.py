"""``--engine ray`` (auditor/pipeline/ray_engine.py) gives what the local engine gives.

One local Ray instance of 2 CPUs serves the module (the engine joins a process's existing
connection and leaves it open). Each pair of scans runs without the cache, or with a fresh
cache folder each, so both engines measure (and embed) every image. ``report.json`` holds no
time, duration or output path (its one path, ``dataset.root``, is the dataset both scans
read), so the comparison is of whole files, byte for byte.

The tests that need Ray skip where it is not installed (``pip install 'image-auditor[ray]'``),
but not in CI (``.ci/run`` installs it with the dev extra and sets ``AUDITOR_REQUIRE_RAY=1``);
the missing-Ray message is tested without it.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from auditor.cli.app import app
from auditor.demo.build import build_demo, make_coco
from auditor.io.store import Store
from auditor.pipeline.ray_engine import EngineWarning

runner = CliRunner()


def _need_ray() -> None:
    if not os.environ.get("AUDITOR_REQUIRE_RAY"):  # .ci/run sets it: there these tests cannot skip
        pytest.importorskip("ray.data", reason="Ray Data is not installed: pip install 'image-auditor[ray]'")
    import ray.data  # noqa: F401


@pytest.fixture(scope="module")
def cluster():
    _need_ray()
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    """The demo's two datasets: classification (70 images, every defect) and COCO detection."""
    root = tmp_path_factory.mktemp("ray-data")
    build_demo(root / "demo")
    make_coco(root / "coco")
    return {"demo": root / "demo", "coco": root / "coco"}


def _scan(dataset: Path, out: Path, *args: str) -> bytes:
    res = runner.invoke(app, ["scan", str(dataset), "--out", str(out), "-q", *args])
    assert res.exit_code == 0, res.output
    return (out / "report.json").read_bytes()


def _engines_agree(dataset: Path, tmp_path: Path, *args: str) -> None:
    """A Ray scan and a local scan of ``dataset`` write the same report.json, images.parquet
    and report.html; the Ray scan filled its cache with every image; the driver (this
    process) never loaded TensorFlow for it."""
    tensorflow_before = "tensorflow" in sys.modules
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineWarning)  # part of the work fell back to the driver
        on_ray = _scan(dataset, tmp_path / "ray", "--engine", "ray", "--cache-dir", str(tmp_path / "cache"), *args)
    if not tensorflow_before:  # (the rest of the suite may have loaded it already)
        assert "tensorflow" not in sys.modules
    local = _scan(dataset, tmp_path / "local", "--cache-dir", str(tmp_path / "local-cache"), *args)
    assert on_ray == local
    for name in ("images.parquet", "report.html"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert _rows(tmp_path / "cache") == _rows(tmp_path / "local-cache")


def _rows(cache: Path) -> dict[str, list]:
    """Every row of a cache's tables but the recorded scan outputs (``results``), sorted."""
    db = sqlite3.connect(Store.default_path(cache))
    try:
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in ("files", "measurements", "embeddings")}
    finally:
        db.close()


@pytest.mark.parametrize("name", ["demo", "coco"])
def test_ray_engine_writes_the_local_report_without_embeddings(cluster, datasets, tmp_path, name):
    _engines_agree(datasets[name], tmp_path, "--no-embed")


def test_workers_compute_as_the_driver_environment_says(cluster, datasets, tmp_path, monkeypatch):
    """AUDITOR_NO_JIT=1 on the driver: the workers use the numpy measurements too (they differ
    from the compiled ones in the last float32 bits, which report.json shows)."""
    monkeypatch.setenv("AUDITOR_NO_JIT", "1")
    _engines_agree(datasets["coco"], tmp_path, "--no-embed")


def _crash_once(marker: str):
    """A measure function whose first call kills its worker process (and leaves ``marker``)."""
    from auditor.pipeline.ray_engine import measure_records

    def measure(paths, options):
        if not os.path.exists(marker):
            Path(marker).touch()
            os._exit(1)  # the Ray worker dies mid-task: no result, no exception
        return measure_records(paths, options)

    return measure


def test_a_worker_that_dies_loses_and_duplicates_no_row(cluster, datasets, tmp_path):
    from auditor.pipeline.api import scan
    from auditor.pipeline.ray_engine import RayEngine

    dataset = datasets["demo"]
    local = scan(dataset, tmp_path / "local", embed=False, use_cache=False, workers=1)
    marker = tmp_path / "crashed"
    engine = RayEngine(measure=_crash_once(str(marker)), max_retries=2, files_per_task=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", EngineWarning)  # Ray's retry did it: nothing left to the driver
        on_ray = scan(dataset, tmp_path / "ray", embed=False, engine=engine, cache_dir=tmp_path / "cache")
    assert marker.exists()  # a worker did die
    assert len(on_ray.table) == len(local.table) and on_ray.table["path"].is_unique
    assert (tmp_path / "ray" / "report.json").read_bytes() == (tmp_path / "local" / "report.json").read_bytes()
    with Store.open_default(tmp_path / "cache") as store:
        ok = on_ray.table[on_ray.table["content_hash"].notna()]
        assert store.count("files") == len(ok)
        assert store.count("measurements") == ok["content_hash"].nunique()


def test_ray_engine_writes_the_local_report_with_embeddings(cluster, datasets, tmp_path):
    """Embeddings come from an actor that loads the backbone once, into the store's format."""
    _engines_agree(datasets["demo"], tmp_path)
    with Store.open_default(tmp_path / "cache") as store:
        assert store.count("embeddings") > 0


def test_engine_ray_without_ray_exits_2_saying_how_to_install_it(tmp_path):
    (tmp_path / "ds").mkdir()
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if not installed\n"
        "from auditor.cli.app import main\n"
        f"sys.argv = ['audit', 'scan', {str(tmp_path / 'ds')!r}, '--engine', 'ray', '--no-embed',"
        f" '--out', {str(tmp_path / 'out')!r}]\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'image-auditor[ray]'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_unknown_engine_is_a_usage_error(tmp_path):
    res = runner.invoke(app, ["scan", str(tmp_path), "--engine", "spark"])
    assert res.exit_code == 2


def test_a_cluster_address_nobody_answers_is_an_input_error(tmp_path):
    """Ray itself would try to connect for minutes; the scan says so at once."""
    _need_ray()
    from PIL import Image

    (tmp_path / "ds").mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(tmp_path / "ds" / "a.png")
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1"}
    cmd = [sys.executable, "-m", "auditor", "scan", str(tmp_path / "ds"), "--engine", "ray", "--no-embed",
           "--no-cache", "--out", str(tmp_path / "o")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "no Ray cluster answers at 127.0.0.1:1" in proc.stderr
