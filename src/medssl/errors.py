"""The one exception type for user mistakes.

The CLI prints a :class:`MedsslError` as a single line (no traceback) and exits with
status 2. Anything else is a bug and keeps its traceback.
"""


class MedsslError(Exception):
    """A problem with the user's input: a file, a row, a column or an option."""
