"""The one exception type for bad input: entry points print it as a one-line `error: ...`."""


class UserError(Exception):
    """Something the user gave us is wrong; the message says what and what to do instead."""
