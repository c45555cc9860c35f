"""One base class for every mistake a user can make: the CLI catches `FlowArenaError`
in one place and prints its message as one `error:` line with exit code 1."""

from __future__ import annotations


class FlowArenaError(Exception):
    """A user-facing error: its message is one line that says what to do."""


class PromptFileError(FlowArenaError, ValueError):
    """A prompt file is missing or malformed (the message names file and line)."""
