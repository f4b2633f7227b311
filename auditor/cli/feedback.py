"""What every command shows besides its result: the one-line error and exit code, the progress
bar, ``warning:`` lines, and the input errors turned into them (``--engine ray`` checked first).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import typer

from auditor.cli.render import err_console, term


def fail(message: str, code: int = 2) -> None:
    """One line on stderr (a multi-line reason, such as a YAML error, is joined) and exit."""
    one_line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    err_console.print(f"error: {term(one_line)}", style="red", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def progress():
    """A rich progress bar driven by the API's (stage, advance, total) callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeRemainingColumn(),
        console=err_console, transient=True, disable=not err_console.is_terminal,
    )  # fmt: skip
    tasks: dict[str, int] = {}

    def update(stage: str, advance: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bar.add_task(stage, total=total, rate="")
        task = bar.tasks[tasks[stage]]
        speed = task.speed
        bar.update(tasks[stage], advance=advance, rate=f"{speed:.0f} img/s" if speed else "")

    return bar, update


def engine_ready(engine: str) -> None:
    """--engine ray: Ray Data must be importable, or exit 2 saying how to install it, before any work."""
    if engine != "local":
        from auditor.pipeline.ray_engine import require_ray

        require_ray()


def warn(text: str) -> None:
    """One ``warning:`` line on stderr (terminal control characters escaped); the command goes on."""
    err_console.print(f"warning: {term(text)}", style="yellow", highlight=False, soft_wrap=True)


@contextmanager
def input_errors():
    """Input errors (a missing or invalid input, an output that cannot be written) -> one
    line on stderr and exit 2; Ctrl-C -> exit 130, cache kept; a cache that cannot be used
    -> one ``warning:`` line, and the command goes on; so does an embedding runtime that fell
    back to Keras."""
    from auditor.core.fsutil import OutputError
    from auditor.embed.backbones import BackboneError
    from auditor.embed.backbones.lite_runtime import EmbedRuntimeWarning
    from auditor.embed.backbones.torch_state import ModelFileError
    from auditor.io.dataset import DatasetError
    from auditor.io.store import CacheWarning
    from auditor.pipeline.ray_engine import EngineError
    from auditor.policy.gate import ReportError
    from auditor.policy.rules import RulesError

    shown: set[str] = set()
    default_show = warnings.showwarning

    def show(message, category, *args, **kwargs) -> None:
        if not issubclass(category, (CacheWarning, EmbedRuntimeWarning)):
            return default_show(message, category, *args, **kwargs)
        if str(message) not in shown:  # each store warns once; several stores, one line
            shown.add(str(message))
            warn(str(message))

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CacheWarning)
            warnings.simplefilter("always", EmbedRuntimeWarning)
            warnings.showwarning = show
            yield
    except (DatasetError, RulesError, BackboneError, ModelFileError, FileNotFoundError, ReportError,
            OutputError, EngineError) as exc:  # fmt: skip
        fail(str(exc))
    except KeyboardInterrupt:
        err_console.print("interrupted; the cache keeps what was finished so far", style="yellow")
        raise typer.Exit(130) from None
