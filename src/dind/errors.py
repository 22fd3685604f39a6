"""The one exception type dind raises for problems a user can cause."""


class DindError(Exception):
    """An error caused by user input or environment; the CLI prints its message on one line
    and exits non-zero."""
