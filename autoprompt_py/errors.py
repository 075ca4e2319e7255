"""The one exception type for mistakes a user can make and fix."""


class AutopromptError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it.

    The CLI prints it as a single line and exits with code 2; it is never a bug in the library.
    """
