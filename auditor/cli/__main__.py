"""``python -m auditor.cli``: the ``audit`` command."""

from auditor.cli.app import main

main()
