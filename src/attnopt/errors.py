"""How the program stops early: a user error, or an interruption that kept the work done."""

from __future__ import annotations

import unicodedata
from typing import TextIO


class UserError(Exception):
    """Bad input from the user: the CLI prints ``error: <message>`` and exits with status 2.

    The message must name the culprit (a path, a flag, a checkpoint) and say what to do.
    """


class Interrupted(Exception):  # noqa: N818 (not an error: the user asked for it)
    """Training stopped on SIGINT/SIGTERM after saving ``checkpoint`` at ``episode``."""

    def __init__(self, episode: int, checkpoint: str) -> None:
        super().__init__(f"interrupted at episode {episode}; saved {checkpoint}")
        self.episode, self.checkpoint = episode, checkpoint


def one_line(message: str) -> str:
    """``message`` with control characters and line breaks (from file names, say) escaped,
    so that an error is always exactly one line."""
    return "".join(
        ch.encode("unicode_escape").decode("ascii")
        if unicodedata.category(ch) in ("Cc", "Zl", "Zp")
        else ch
        for ch in message
    )


def printable(text: str, stream: TextIO) -> str:
    """``text`` as ``stream`` can encode it: file names that are not valid UTF-8 (or not in
    the terminal's encoding) come out as backslash escapes instead of an exception."""
    encoding = getattr(stream, "encoding", None) or "utf-8"
    return text.encode(encoding, "backslashreplace").decode(encoding)
