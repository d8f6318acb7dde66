"""The one exception type for user-facing errors: the CLI prints its message on one line and exits 2."""


class SeqkdError(Exception):
    """A problem with the user's input or environment (not a bug): shown as a one-line message."""


class DataError(SeqkdError):
    """Bad or missing data: the message names the file and, where it applies, the line."""
