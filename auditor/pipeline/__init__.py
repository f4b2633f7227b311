"""The jobs the commands run, for the API and the CLI alike: :mod:`.scan` (a scan, reused
whole when nothing it reads changed) and :mod:`.run` (scan -> clean -> fine-tune)."""
