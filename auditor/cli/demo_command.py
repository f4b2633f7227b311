"""``audit demo``: build a small dataset with injected defects offline, scan it, and count the
defects found. Registered on the ``audit`` app by :mod:`auditor.cli.app`.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from auditor.cli.feedback import fail, input_errors, progress
from auditor.cli.render import err_console, out_console, print_summary, term
from auditor.core.fsutil import check_output


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to build the demo dataset and report.")] = Path(
        "reports/demo"
    ),
    workers: Annotated[int | None, typer.Option("--workers", "-j", min=1)] = None,
) -> None:
    """Build a small labeled dataset offline from images shipped in scikit-image and
    scikit-learn, inject one or more defect of every kind, scan it, and print the report path;
    then the same for a small COCO detection dataset with every box defect."""
    from auditor.demo.build import build_demo, make_coco
    from auditor.pipeline.api import scan as run_scan

    data_dir = out / "dataset"
    with input_errors():
        check_output(out)  # the default, reports/demo, may be in a read-only folder
        injected = build_demo(data_dir)  # a full disk: one line, nothing half-built
    err_console.print(f"demo dataset: {term(str(data_dir))} ({injected['images']} images, "
                      f"{len(injected['defects'])} injected defects)", highlight=False)  # fmt: skip
    bar, update = progress()
    with input_errors(), bar:
        result = run_scan(data_dir, out, workers=workers, use_cache=False, progress=update)
    print_summary(result)
    hit = _injected_found(result.report, injected["defects"])
    out_console.print(f"Injected defects found: {hit}/{len(injected['defects'])}")
    out_console.print(f"Report: {term(str(result.files['html']))}", highlight=False, soft_wrap=True)

    # the detection part: a COCO dataset with every box defect (box checks need no embeddings)
    coco_dir = out / "detection" / "dataset"
    with input_errors():
        if coco_dir.exists():
            try:
                shutil.rmtree(coco_dir)
            except OSError as exc:
                fail(f"cannot replace the detection demo dataset {coco_dir}: {exc.strerror or exc}")
        boxes = make_coco(coco_dir)
    err_console.print(f"\ndetection demo (COCO): {term(str(coco_dir))} ({len(boxes)} injected box defects)",
                      highlight=False)  # fmt: skip
    bar, update = progress()
    with input_errors(), bar:
        det = run_scan(coco_dir, out / "detection", workers=workers, use_cache=False, embed=False, progress=update)
    print_summary(det)
    out_console.print(f"Injected box defects found: {_injected_found(det.report, boxes)}/{len(boxes)}")
    out_console.print(f"Report: {term(str(det.files['html']))}", highlight=False, soft_wrap=True)


def _injected_found(report: dict, injected: list[dict]) -> int:
    """How many injected ``{"check", "path"}`` defects the report has (path None: the check
    has a finding at all)."""
    found = {(f["check"], p) for f in report["findings"] for p in f["paths"]}
    checks = {f["check"] for f in report["findings"]}
    return sum(1 for d in injected if (d["check"], d["path"]) in found or (d["path"] is None and d["check"] in checks))
