"""Seconds per phase of a run, summed into a ``{phase: seconds}`` dict; medians of forwards
timed in turns."""
from __future__ import annotations

import contextlib
import statistics
import time
from typing import Callable, Sequence

import torch

WARMUP = 3  # untimed rounds before the timed ones: caches, allocators, oneDNN's primitive cache


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


def interleaved_median_ms(forwards: Sequence[Callable[[torch.Tensor], object]],
                          x: torch.Tensor, repeats: int) -> list[float]:
    """Median milliseconds of each ``forward(x)`` over ``repeats`` rounds, after warm-up rounds.
    Each round calls every forward once in turn, so a burst of load from other processes slows
    them alike instead of falling on one of them: their ratio is what the timing is for."""
    synchronise = torch.cuda.synchronize if x.device.type == "cuda" else (lambda: None)
    seconds = [[] for _ in forwards]
    with torch.no_grad():
        for call in range(WARMUP + repeats):
            for forward, taken in zip(forwards, seconds):
                start = time.perf_counter()
                forward(x)
                synchronise()
                if call >= WARMUP:
                    taken.append(time.perf_counter() - start)
    return [1000 * statistics.median(taken) for taken in seconds]
