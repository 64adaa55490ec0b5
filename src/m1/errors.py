"""User-facing errors: one clear line, no traceback (unless --debug)."""


class M1Error(Exception):
    """A problem the user can fix: bad input, missing file, unreachable server.

    The message is printed as one line by the CLI; it should say what went wrong,
    where (file and line, or field), and what to do about it.
    """


def first_line(e: BaseException) -> str:
    """An exception's message cut to its first line (its type name when it has none), for M1Error texts."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
