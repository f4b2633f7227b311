"""What the ``audit`` commands print: the summary table, the shift table and the gate's
verdict. Everything that comes from the data (file and class names, messages, paths) goes
through :func:`term`: as text, never as rich markup or terminal control."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape

from auditor.core.fsutil import printable


def _width(stream) -> int | None:
    """The console's width: the terminal's (None) on a terminal or where ``COLUMNS`` says; 200
    where output goes to a pipe, a file or a CI log, which rich would wrap at 80 columns,
    splitting the paths in the tables mid-word."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        tty = False
    return None if tty or os.environ.get("COLUMNS") else PIPE_WIDTH


#: Line width of the tables where output is not a terminal.
PIPE_WIDTH = 200
out_console = Console(width=_width(sys.stdout))


err_console = Console(stderr=True, width=_width(sys.stderr))


SEV_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def term(text: object) -> str:
    """``text`` safe to print with rich: control characters written out (an escape sequence in
    a file name must not recolour, move or clear the screen; see
    :func:`auditor.core.fsutil.printable`) and rich markup escaped."""
    return escape(printable(text))


def print_summary(result, console: Console = out_console, examples: int = 2) -> None:
    """A table of checks with counts and the worst examples, then the verdict."""
    from rich.table import Table

    report = result.report
    ds = report["dataset"]
    splits = term(", ".join(f"{k} {v}" for k, v in ds["splits"].items()) or "no splits")
    bx = report.get("boxes")
    classes = "" if bx else f"{len(ds['classes'])} classes, "
    skipped = ", ".join(f"{k} {v}" for k, v in (ds.get("skipped") or {}).items())
    console.print(
        f"[bold]{ds['images']}[/] images ({ds['unreadable']} unreadable), {classes}{splits}; "
        f"layout [bold]{term(ds['layout'])}[/]" + (f"; skipped: {term(skipped)}" if skipped else ""),
        highlight=False,
    )
    if bx:
        per = ", ".join(f"{term(c)} {v['boxes']}" for c, v in list(bx["classes"].items())[:8])
        console.print(f"boxes ({term(bx['format'].upper())}): [bold]{bx['boxes']}[/] on {bx['annotated_images']} of "
                      f"{bx['images']} images; {per}", highlight=False)  # fmt: skip
    emb = getattr(result, "embeddings", None)
    if getattr(result, "reused", False):
        bb = report.get("backbone")
        what = f"embeddings from {term(bb['id'])}, " if bb else ""
        console.print(f"unchanged since the last scan with these options: {what}checks and report reused from the "
                      "cache (--no-cache runs everything)", style="dim", highlight=False)  # fmt: skip
    if emb is None and not report.get("backbone"):
        console.print("embeddings: skipped (--no-embed); outlier and embedding near-duplicate checks did not run",
                      style="dim", highlight=False)  # fmt: skip
    elif emb is not None:
        fresh = f"{emb.computed} computed, {emb.cached} from cache"
        failed = f", {len(emb.failures)} failed" if emb.failures else ""
        console.print(f"embeddings: [bold]{term(emb.backbone['id'])}[/] ({emb.backbone['dims']}-d; {fresh}{failed})",
                      highlight=False)  # fmt: skip
    print_shift(report, console)
    by_check: dict[str, list[dict]] = {}
    for f in report["findings"]:
        by_check.setdefault(f["check"], []).append(f)
    table = Table(title="Findings", show_lines=False)
    table.add_column("check")
    table.add_column("severity")
    table.add_column("findings", justify="right")
    table.add_column("worst examples", overflow="fold")
    gate = {r["rule"]: r for r in report["gate"]["rules"]}
    for name, info in report["checks"].items():
        fs = by_check.get(name, [])
        if not info["enabled"] or not fs:
            continue
        worst = sorted(fs, key=lambda f: -f["score"])[:examples]
        ex = "; ".join(
            (", ".join(f["paths"][:3]) + (" ..." if len(f["paths"]) > 3 else "")) or f["message"] for f in worst
        )
        status = gate.get(name, {}).get("status", "pass")
        mark = {"fail": " [bold red]FAIL[/]", "warn": " [yellow]over limit[/]"}.get(status, "")
        sev = info["severity"]
        table.add_row(term(name), f"[{SEV_STYLE[sev]}]{sev}[/]", str(len(fs)) + mark, term(ex))
    skipped: dict[str, list[str]] = {}
    for name, info in report["checks"].items():
        if name.startswith("box_") and not report.get("boxes"):
            continue  # box checks on a classification dataset: nothing to say
        if info["enabled"] and info.get("skipped") and not by_check.get(name):
            skipped.setdefault(info["skipped"], []).append(name)
    if skipped:
        lines = "; ".join(f"{', '.join(names)} ({why})" for why, names in skipped.items())
        console.print(f"not run: {term(lines)}", style="dim", highlight=False)
    if table.row_count:
        console.print(table)
    else:
        console.print("[green]No findings.[/]")
    print_diagnosis(report, console)
    if report["gate"]["passed"]:
        console.print("[bold green]Gate: passed[/]")
    else:
        failed = [r["rule"] for r in report["gate"]["rules"] if r["status"] == "fail"]
        console.print(f"[bold red]Gate: failed[/] ({term(', '.join(failed))})")


VERDICT_STYLE = {"shift": "bold yellow", "minor": "cyan", "none": "green", "skipped": "dim"}


def print_shift(report: dict, console: Console = out_console, explanations: int = 3) -> None:
    """One block per comparison (verdict, effect size, what differs) and the pretraining gap."""
    for s in report.get("shift") or []:
        head = term(f"shift {s['reference']} -> {s['target']}: ")
        style = VERDICT_STYLE.get(s["verdict"], "")
        if s["verdict"] == "skipped" or s.get("auc") is None:
            console.print(head + f"[{style}]skipped[/] ({term(str(s['skipped']))})", highlight=False)
        else:
            lo, hi = s["auc_ci"]
            p = "p<0.001" if s["p_value"] < 0.001 else f"p={s['p_value']:.3f}"
            console.print(
                head + f"[{style}]{term(s['verdict'])}[/] (drift {s['magnitude']:.2f}, "
                f"AUC {s['auc']:.2f} [{lo:.2f}, {hi:.2f}], "
                f"{p}; MMD² {s['mmd2']:.4f}, FID {s['fid']:.1f}; n = {s['n_sampled'][0]} vs {s['n_sampled'][1]})",
                highlight=False,
            )  # fmt: skip
        for line in s["explanations"][:explanations]:
            console.print(f"  - {term(line)}", highlight=False)
    gap = report.get("pretraining_gap")
    if gap and gap.get("level"):
        parts = []
        if gap["feature_gap"] is not None:
            parts.append(f"feature gap {gap['feature_gap']:.2f}")
        if gap["head_confidence"] is not None:
            parts.append(f"ImageNet head confidence {gap['head_confidence']:.2f}")
        console.print(f"pretraining gap: [bold]{term(gap['level'])}[/] ({', '.join(parts)})", highlight=False)


def print_gate(result, console: Console = out_console) -> None:
    """Failing rules first (with their first findings), then those over a warning limit."""
    from rich.table import Table

    table = Table(title="Gate", show_lines=False)
    for col in ("rule", "status", "findings", "allowed", "flagged", "first findings"):
        table.add_column(col, overflow="fold")
    for e in result.failures + result.warnings:
        allowed = " / ".join(x for x in (
            f"{e['threshold']}" if e["threshold"] is not None else "",
            f"{e['max_fraction']:.1%}" if e["max_fraction"] is not None else "") if x)  # fmt: skip
        style = "bold red" if e["status"] == "fail" else "yellow"
        table.add_row(term(e["rule"]), f"[{style}]{e['status']}[/]", str(e["value"]), allowed or "-",
                      f"{e['fraction']:.1%}", term("; ".join(e["examples"][:2])))  # fmt: skip
    passed = sum(r["status"] == "pass" for r in result.report["gate"]["rules"])
    if table.row_count:
        console.print(table)
    console.print(f"{passed} rules passed, {len(result.warnings)} over a warning limit, {len(result.failures)} failed",
                  highlight=False)  # fmt: skip


CONFIDENCE_STYLE = {"high": "bold red", "medium": "yellow", "low": "dim"}


def print_diagnosis(report: dict, console: Console = out_console, top: int = 3) -> None:
    """The ranked causes of low validation accuracy with their effect and fix (or the line that
    says no data cause was found)."""
    causes = report.get("diagnosis")
    summary = report.get("diagnosis_summary")
    if causes is None or summary is None:
        return
    split = summary.get("eval_split") or "validation"
    if not causes:
        console.print(f"[bold]Why {term(split)} accuracy may be low:[/] [green]{term(summary['verdict'])}[/]",
                      highlight=False)  # fmt: skip
    else:
        console.print(f"[bold]Why {term(split)} accuracy may be low[/] (most likely first):", highlight=False)
        for c in causes[:top]:
            style = CONFIDENCE_STYLE[c["confidence"]]
            console.print(f" {c['rank']}. [bold]{term(c['cause'])}[/] [{style}]{c['confidence']} confidence[/], "
                          f"~{100 * c['effect']['points']:.0f} points: {term(c['effect']['text'])}",
                          highlight=False)  # fmt: skip
            fix = c["fix"]
            what = f"[bold]{term(fix['command'])}[/]" if fix.get("command") else term(fix["text"])
            console.print(f"    fix: {what}", highlight=False)
        if len(causes) > top:
            rest = ", ".join(c["cause"] for c in causes[top:])
            console.print(f"    also: {term(rest)} (report.html and report.json: diagnosis, with the fixes)",
                          style="dim", highlight=False)  # fmt: skip
    if summary.get("not_assessed"):
        lines = "; ".join(f"{k} ({v})" for k, v in summary["not_assessed"].items())
        console.print(f"not assessed: {term(lines)}", style="dim", highlight=False)
