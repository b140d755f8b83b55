"""The one exception type every data reader raises for bad input."""


class DataError(ValueError):
    """Bad or inconsistent data on disk; the message names the file and what is wrong."""
