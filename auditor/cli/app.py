"""The ``audit`` command: thin. Parses arguments, calls :mod:`auditor.pipeline.api`, prints with rich.

Exit codes: 0 success (or gate passed), 1 gate failed, 2 usage or input error (one-line
reason on stderr). Everything that comes from the data (file and class names, messages,
paths) is printed through :func:`term`: as text, never as rich markup or terminal control.

The commands live in :mod:`auditor.cli.scan_commands` (scan, report, gate, embed),
:mod:`auditor.cli.train_commands` (clean, finetune, run) and :mod:`auditor.cli.demo_command`;
here they are registered on one ``app``, in the order ``audit --help`` lists them.
"""

from __future__ import annotations

import sys

import typer

from auditor.cli.demo_command import demo
from auditor.cli.scan_commands import embed, gate, report, scan
from auditor.cli.train_commands import clean, finetune, run_pipeline

app = typer.Typer(
    name="audit",
    help="Audit an image dataset before fine-tuning a pretrained vision model.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)

app.command()(scan)
app.command()(report)
app.command()(gate)
app.command()(clean)
app.command()(finetune)
app.command("run")(run_pipeline)
app.command()(embed)
app.command()(demo)


def main() -> None:
    try:
        app()
    except BrokenPipeError:  # `audit scan ... | head`
        sys.exit(0)
    finally:
        # Everything is written by now. Freezing the heap spares the interpreter's exit a
        # full garbage collection over numba's and pandas' objects (about 0.2 s).
        import gc

        gc.freeze()


if __name__ == "__main__":
    main()
