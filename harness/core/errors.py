"""One base class for every mistake a user can make: the CLI catches `FlowArenaError`
in one place and prints its message as one `error:` line with exit code 1."""

from __future__ import annotations


class FlowArenaError(Exception):
    """A user-facing error: its message is one line that says what to do."""
