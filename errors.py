"""The one exception every layer above the networks raises for bad input from the user."""


class UserError(Exception):
    """Bad input from the user: reported as one line and a non-zero exit, never a traceback."""
