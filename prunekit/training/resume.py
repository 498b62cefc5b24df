"""Resumable runs: ``DIR/resume.pt``, written every ``--checkpoint-every`` training steps and
when the run is asked to stop (SIGTERM), and read by ``prunekit run --resume DIR``.

A run is its mode's sequence of prunes and training phases (``prunekit.pipeline.steps``, which
writes the checkpoint of each phase). The checkpoint
holds the settings, the masks of every prune made so far, and the phase in progress: its index,
steps done, model weights, live masks, optimiser and schedule states, random generator states,
the batch position, the report so far and the state of hooks that keep one (RigL's updater,
adaptive task weights). Resuming runs the mode again from the start: prunes made before the
stop return their recorded masks, phases finished before it are skipped, and the phase in
progress goes on from its checkpoint, so the run ends with the masks and metrics it would
have had (on CPU with the same threads).

The file is written to a temporary name and renamed, so a run killed at any moment leaves the
previous checkpoint or the new one. It is removed when the run finishes.
"""
from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Protocol

import torch

from ..errors import PrunekitError, one_line

RESUME_FILE = "resume.pt"
FORMAT = 1
CONTENTS = ("config", "world_size", "phase", "resumption", "model", "masks", "prunes", "hooks", "report",
            "timings", "elapsed")


class RunStopped(PrunekitError):
    """The run was asked to stop (SIGTERM) and left a checkpoint to resume from."""


class KeepsState(Protocol):
    """A training hook whose state a checkpoint keeps (RigL's updater, adaptive weights)."""

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def read_resume(folder: str | Path) -> dict:
    """The checkpoint of the stopped run in ``folder``; one clear error for anything else."""
    folder = Path(folder)
    path = folder / RESUME_FILE
    if not folder.is_dir():
        raise PrunekitError(f"run folder {str(folder)!r} does not exist")
    if not path.is_file():
        finished = (folder / "checkpoint.pt").is_file()
        raise PrunekitError(f"{str(folder)!r} has nothing to resume: "
                            + ("the run finished" if finished else
                               "no resume.pt (the run stopped before its first checkpoint; "
                               "see --checkpoint-every)"))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files: zip, pickle and torch errors alike
        raise PrunekitError(f"{str(path)!r} could not be read as a checkpoint "
                            f"({type(exc).__name__}: {one_line(exc, 200)})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise PrunekitError(f"{str(path)!r} is not a prunekit resume checkpoint")
    missing = [key for key in CONTENTS if key not in state]
    if missing:
        raise PrunekitError(f"{str(path)!r} is not a whole resume checkpoint (no "
                            f"{', '.join(missing)})")
    return state


class StopRequest:
    """SIGTERM, caught while a run is going: inside a training phase the run stops after the
    current step with a checkpoint; elsewhere at once (``RunStopped``)."""

    def __init__(self):
        self.requested = False
        self.in_training = False
        self.installed = False
        self.previous = None

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self.handle)
            self.installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self.installed:  # None: a handler set outside Python, restored as the default
            signal.signal(signal.SIGTERM, signal.SIG_DFL if self.previous is None
                          else self.previous)
            self.installed = False

    def handle(self, signum, frame) -> None:
        self.requested = True
        if not self.in_training:
            raise RunStopped("stopped by SIGTERM outside a training step (no new checkpoint); "
                             "a run that wrote one goes on with prunekit run --resume")
