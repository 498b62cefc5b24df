"""Errors a user can cause. The CLI prints them as one line and exits with code 2."""
from __future__ import annotations

import difflib
from typing import Iterable


def one_line(message: object, limit: int | None = None) -> str:
    """A message on one line, cut at ``limit`` characters when given."""
    text = " ".join(str(message).split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


# torch puts this, and the worker's traceback, before the message of an error raised while a
# data-loading worker process reads a sample.
WORKER_TRACEBACK = "Original Traceback (most recent call last):"


def user_message(error: BaseException) -> str:
    """``error``'s message on one line, without the traceback torch puts before the message
    of an error in a data-loading worker (which ends with ``module.Class: message``)."""
    text = str(error)
    if WORKER_TRACEBACK in text:
        prefix = f"{type(error).__module__}.{type(error).__qualname__}: "
        text = text.rsplit(prefix, 1)[-1]
    return one_line(text)


class PrunekitError(Exception):
    """A problem with the user's input or run (bad flag, bad path, NaN loss, unknown plugin)."""


class UnknownNameError(PrunekitError):
    """A name that is not among the known ones; the message lists them and the closest match."""

    def __init__(self, what: str, name: str, known: Iterable[str]):
        self.name, self.known = name, sorted(known)
        message = f"unknown {what} {name!r}; known: {', '.join(self.known) or '(none)'}"
        close = difflib.get_close_matches(name, self.known, n=1, cutoff=0.0)
        if close:
            message += f"; did you mean {close[0]!r}?"
        super().__init__(message)


class NonFiniteLossError(PrunekitError):
    """A task's loss became NaN or infinite during scoring or training."""


class NonFiniteDataError(PrunekitError):
    """An input image holds NaN or infinite values."""
