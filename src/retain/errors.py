"""The one exception type users see.

A ``RetainError`` carries a single line that names the file / line / key at fault and how to fix it.
The CLI prints ``error: <message>`` and exits with status 2; no traceback.
"""


class RetainError(Exception):
    """A user-facing error: one line, names what is wrong and how to fix it."""
