"""User-facing errors: one clear line that names the fix."""


class AliceError(Exception):
    """An error caused by user input (a file, a setting, a value) that says how to fix it.

    The CLI prints these as one line and exits non-zero; nodes and the app show the message as is.
    """
