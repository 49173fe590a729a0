"""The one exception type users see as a message rather than a traceback."""


class UserError(Exception):
    """A problem the user can fix: bad config, missing file, no network.

    The CLI prints ``str(error)`` without a traceback and exits non-zero;
    ``tuneloop --debug`` re-raises it so the traceback is visible.
    """
