"""``auditor.scan``: a scan that is reused whole when nothing it reads has changed, for the
API and the CLI alike (``audit scan`` and ``audit gate`` are this function and a printer).

On a hit the outputs of the earlier scan are written into ``out`` again and a
:class:`~auditor.core.types.ScanResult` with ``reused=True`` is returned without importing
numpy, pandas or the checks; on a miss :func:`auditor.pipeline.api.scan` runs and its outputs are
recorded (:mod:`auditor.io.reuse` says what the fingerprint covers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from auditor.core.fsutil import check_cache_dir, output_folder
from auditor.core.types import ProgressFn, ScanResult

if TYPE_CHECKING:
    from auditor.policy.rules import Rules

#: Every option of :func:`auditor.pipeline.api.scan` that changes its outputs, with its default there
#: (a test holds the two to one definition): two scans with the same options share one
#: reuse record, whichever command or call made them.
SCAN_OPTIONS: dict[str, Any] = dict(
    layout="auto", manifest=None, coco=None, images=None, source=None, source_layout="auto", source_manifest=None,
    projection=True, embed=True, backbone=None, weights=None, layer=None, preprocess="raw", batch_size=32,
    follow_symlinks=False, max_pixels=None,
)  # fmt: skip

#: Options naming files or folders the scan reads besides the dataset: part of the fingerprint.
_READS = ("source", "images", "manifest", "coco", "source_manifest", "weights", "backbone")


def scan_options(**given: Any) -> dict[str, Any]:
    """:data:`SCAN_OPTIONS` with ``given`` filled in; TypeError for a name that is not one."""
    unknown = set(given) - set(SCAN_OPTIONS)
    if unknown:
        raise TypeError(f"not scan options: {sorted(unknown)}")
    return {**SCAN_OPTIONS, **given}


def _fingerprintable(rules: Any, options: dict[str, Any]) -> bool:
    """A Rules object or a backbone object (not a name or a path) cannot be fingerprinted."""
    named = (str, os.PathLike, type(None))
    return isinstance(rules, named) and isinstance(options["backbone"], named)


def _prepare(dataset, options: dict, rules, cache_dir):
    from auditor.io.reuse import prepare
    from auditor.policy.rules import RulesError, rules_files

    try:
        files_of_rules = rules_files(rules)
    except (RulesError, OSError):  # no reuse: the scan says what is wrong with the rules
        return None

    trees, files = [], []
    for key in _READS:
        path = Path(options[key]) if options[key] else None
        if path is not None and path.is_dir():
            trees.append(path)
        elif path is not None and path.is_file():
            files.append(path)  # a manifest, COCO file, weights or model file
            if key == "source":  # a source manifest: its folder holds the images it lists
                trees.append(path.parent)
    key_options = {k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in options.items()}
    return prepare(dataset, options=key_options, cache_dir=cache_dir, rules=None if rules is None else str(rules),
                   rules_files=files_of_rules, follow_symlinks=options["follow_symlinks"], extra_trees=trees,
                   extra_files=files)  # fmt: skip


def scan(
    dataset: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    rules: str | os.PathLike | Rules | None = None,
    workers: int | None = None,
    engine: Any = "local",
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    write: bool = True,
    progress: ProgressFn | None = None,
    **options: Any,
) -> ScanResult:
    """Audit an image dataset (:func:`auditor.pipeline.api.scan`, whose options ``options`` are), reusing
    the outputs of an earlier scan with the same options and rules when nothing it reads has
    changed: the dataset's files, the source set, manifests, COCO files, model files, the
    rules files, the auditor itself and the environment that changes results. Only when it
    writes (``write``) and uses the cache (``use_cache``), and ``rules`` and ``backbone`` are
    names or paths (a :class:`~auditor.policy.rules.Rules` or backbone object cannot be
    fingerprinted). Input and output errors are raised before any work, as a full scan
    raises them. ``engine`` (``"local"``, ``"ray"`` or a
    :class:`~auditor.pipeline.ray_engine.RayEngine`) says where a scan that is not reused runs;
    it is not part of the fingerprint, since every engine gives the same outputs."""
    options = scan_options(**options)
    reuse = None
    if write and use_cache and _fingerprintable(rules, options):
        out_dir = output_folder(dataset, out, options["source"], options["images"])  # refused before any work
        check_cache_dir(cache_dir, dataset, options["source"], options["images"])
        reuse = _prepare(dataset, options, rules, cache_dir)
        files = reuse.restore(out_dir) if reuse is not None else None
        if files is not None:
            return ScanResult.reused_from(files)
        out = out_dir
    from auditor.pipeline import api  # after the reuse check (a hit never imports it); looked up at call time

    result = api.scan(dataset, out, rules=rules, workers=workers, cache_dir=cache_dir, use_cache=use_cache,
                      write=write, progress=progress, engine=engine, **options)  # fmt: skip
    if reuse is not None:
        reuse.record(result.files, result.table, result.source_table)
    return result
