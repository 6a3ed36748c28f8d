"""The one exception type densa raises for bad input.

Its message is a single line that names the file or value, what is wrong and what to do; the CLI
prints it without a traceback and exits non-zero.
"""


class DensaError(Exception):
    """A user-facing error: the message says what went wrong and how to fix it."""
