"""Seconds per phase of a run, summed into a ``{phase: seconds}`` dict."""
from __future__ import annotations

import contextlib
import time


@contextlib.contextmanager
def timed(timings: dict, phase: str):
    """Add the seconds spent in the block to ``timings[phase]``."""
    start = time.perf_counter()
    try:
        yield
    finally:
        add_seconds(timings, phase, time.perf_counter() - start)


def add_seconds(timings: dict, phase: str, seconds: float) -> None:
    timings[phase] = round(timings.get(phase, 0.0) + seconds, 3)
