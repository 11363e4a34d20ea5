"""The one exception type that means "the user must fix something"."""


class UserError(Exception):
    """Bad input from the user: the CLI prints ``error: <message>`` and exits with status 2.

    The message must name the culprit (a path, a flag, a checkpoint) and say what to do.
    """
