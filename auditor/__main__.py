"""``python -m auditor``: the ``audit`` command."""

from auditor.cli.app import main

main()
