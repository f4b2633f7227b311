"""Errors that name what the user must fix (each one line, exit code 2 at the command line)."""


class DatasetError(ValueError):
    """The dataset cannot be read as asked (missing, empty, bad manifest): exit code 2."""
