"""Paths a user typed, as messages show them: short, printable, and why the file system refused them.

The OS's own message (`[Errno 36] File name too long: '<the whole path>'`) repeats the path and names the
error number; these say the same in words, with long paths elided in the middle.
"""

from __future__ import annotations

import errno
from pathlib import Path

SHOWN_PATH_CHARS = 120  # a typed path longer than this is shown with its middle elided


def shown_path(path: str | Path) -> str:
    """A typed path as messages show it: whole when short, else its start and end around an ellipsis."""
    text = "".join(char if char.isprintable() else "\N{REPLACEMENT CHARACTER}" for char in str(path))
    if len(text) <= SHOWN_PATH_CHARS:
        return text
    keep = SHOWN_PATH_CHARS // 2
    return f"{text[:keep]}…{text[-keep:]}"


def plain_reason(exc: BaseException) -> str:
    """Why the file system refused a path, in words (never the OS's message, which repeats the path)."""
    if isinstance(exc, OSError):
        if exc.errno == errno.ENAMETOOLONG:
            return "a name in it, or the whole path, is longer than this system allows"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return "this server is not allowed to read it"
        if exc.errno == errno.ELOOP:
            return "it is a loop of symbolic links"
        if exc.strerror:
            return exc.strerror[0].lower() + exc.strerror[1:]
    if isinstance(exc, ValueError) and "null" in str(exc):
        return "it contains a null character, which no file name can hold"
    if isinstance(exc, RuntimeError) and "home" in str(exc):
        return "there is no such user's home folder here"
    return "the file system cannot look it up"
