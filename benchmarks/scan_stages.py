"""``audit scan ARGS`` in this process, with the scan process's own peak RSS per stage.

    python benchmarks/scan_stages.py DATASET --out OUT [audit scan options]
    SCAN_STAGES_JSON=stages.json python benchmarks/scan_stages.py ...   # also as JSON

``benchmarks/bench_scale.py --stages`` runs its scans through this. A thread reads
``/proc/self/statm`` every 20 ms and charges each sample to the innermost stage running:
discovery, measurement, embedding, the check context, each check, the analyses the checks
share (``ok_vectors``, the kNN graph, the label probabilities, the shift tests, the
pretraining gap: charged to whichever check asks first, shown as ``check X > knn``), the
report dict, the projection and writing the outputs. Per stage: RSS at entry, the peak
while it ran, RSS at exit (MiB) and its wall time. Worker processes are not counted here
(bench_scale's tree sampler does that); Linux only (statm).
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import resource
import sys
import threading
import time

_PAGE = os.sysconf("SC_PAGE_SIZE")
_stack: list[str] = []
_stats: dict[str, dict] = {}
_order: list[str] = []
_lock = threading.Lock()


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def _charge(rss: int) -> None:
    with _lock:
        if _stack:
            s = _stats[_stack[-1]]
            s["peak"] = max(s["peak"], rss)


def _sample(every: float) -> None:
    while True:
        _charge(_rss())
        time.sleep(every)


def _timed(name: str, fn):
    def wrapper(*a, **k):
        rss = _rss()
        with _lock:
            key = f"{_stack[-1]} > {name}" if _stack else name
            if key not in _stats:
                _stats[key] = {"entry": rss, "peak": rss, "exit": rss, "s": 0.0, "calls": 0}
                _order.append(key)
            _stack.append(key)
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            rss = _rss()
            with _lock:
                s = _stats[_stack.pop()]
                s["peak"] = max(s["peak"], rss)
                s["exit"] = rss
                s["s"] += time.perf_counter() - t
                s["calls"] += 1

    wrapper.__wrapped__ = fn
    return wrapper


def _patch(module, attr: str, name: str) -> None:
    """Wrap ``module.attr`` and every ``from module import attr`` copy already made."""
    fn = getattr(module, attr)
    wrapped = _timed(name, fn)
    for m in list(sys.modules.values()):
        if getattr(m, "__name__", "").startswith("auditor") and getattr(m, attr, None) is fn:
            setattr(m, attr, wrapped)


def summary() -> list[dict]:
    mib = 2**20
    return [{"stage": k, "entry_mib": round(v["entry"] / mib), "peak_mib": round(v["peak"] / mib),
             "exit_mib": round(v["exit"] / mib), "s": round(v["s"], 1)} for k, v in
            ((k, _stats[k]) for k in _order)]  # fmt: skip


def _report() -> None:
    rows = summary()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    doc = {"stages": rows, "ru_maxrss_mib": round(peak)}
    out = os.environ.get("SCAN_STAGES_JSON")
    if out:
        with open(out, "w") as fh:
            json.dump(doc, fh)
    else:
        print("| stage | RSS at entry | peak | at exit (MiB) | s |\n|---|---|---|---|---|", file=sys.stderr)
        for r in rows:
            cells = (r["stage"], r["entry_mib"], r["peak_mib"], r["exit_mib"], r["s"])
            print("| " + " | ".join(map(str, cells)) + " |", file=sys.stderr)
        print(f"ru_maxrss: {peak:.0f} MiB", file=sys.stderr)


def main() -> None:
    import auditor.report as report_pkg
    from auditor.analysis import labels, shift
    from auditor.checks import catalog
    from auditor.cli.app import main as audit_main
    from auditor.core.context import CheckContext
    from auditor.embed import neighbors
    from auditor.pipeline import api

    threading.Thread(target=_sample, args=(0.02,), daemon=True).start()
    atexit.register(_report)
    for attr, name in (("discover", "discover"), ("_measure_table", "measure"), ("embed_table", "embed"),
                       ("check_context", "check context"), ("build_report", "report dict")):  # fmt: skip
        _patch(api, attr, name)
    _patch(report_pkg, "write_outputs", "write outputs")
    _patch(neighbors, "ok_knn", "knn")
    _patch(labels, "label_probabilities", "label probabilities")
    _patch(shift, "analyse", "shift tests")
    _patch(shift, "dataset_gap", "pretraining gap")
    CheckContext.ok_vectors = _timed("ok_vectors", CheckContext.ok_vectors)
    try:
        from auditor.analysis import projection

        _patch(projection, "project_pairs", "projection")
    except ImportError:
        pass
    real_load_all = catalog.load_all

    def load_all():
        registry = dict(real_load_all())
        for name, spec in registry.items():
            registry[name] = dataclasses.replace(spec, fn=_timed(f"check {name}", spec.fn))
        return registry

    api.load_all = load_all
    sys.argv = ["audit", "scan", *sys.argv[1:]]
    audit_main()


if __name__ == "__main__":
    main()
