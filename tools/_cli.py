"""Shared command-line plumbing: turn user-facing errors into one readable line and a non-zero exit."""
import os
import sys

USER_ERRORS = (ValueError, OSError, KeyError, RuntimeError)


def run_cli(main, argv=None):
    """Run ``main(argv)``; print ``error: <message>`` (no traceback) and exit 2 on a user-facing error.

    Set ``SEESAW_DEBUG=1`` to see the full traceback instead.
    """
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except USER_ERRORS as err:
        if os.environ.get("SEESAW_DEBUG"):
            raise
        message = str(err) or err.__class__.__name__
        if isinstance(err, KeyError):
            message = f"missing key {message}"
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code or 0)
