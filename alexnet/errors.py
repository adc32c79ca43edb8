"""User-facing errors: one clear message and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A problem with the user's input (config, data, checkpoint, flags), not a bug.

    Entry points catch it, print ``error: <message>`` on stderr and return exit code 2.
    """


def report_user_errors(run: Callable[[], int]) -> int:
    """Run ``run()``; turn a ``UserError`` into one message on stderr and exit code 2."""
    try:
        return run()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
