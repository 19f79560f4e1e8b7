"""User-facing errors: the CLI prints these as one line and exits non-zero, without a traceback."""


class TiltError(Exception):
    """A problem with the user's input (config, data, paths) -- reported as one line naming the problem."""
