"""One rank of a torchrun launch for tests/test_distributed.py (not a test module itself).

Runs ``prunekit run`` with the JSON settings of argv[2] on this rank and writes, into the folder
argv[1], ``rank<N>.json``: a hash of every model tensor and every mask as this rank ends. With
``die_after_checkpoint: N`` every rank exits abruptly after its N-th checkpoint; with
``resume: true`` the run in ``out`` goes on from its checkpoint.
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from prunekit.core import distributed
from prunekit.pipeline.engine import Run
from prunekit.pipeline.config import QUICK, RunConfig
from prunekit.pipeline.steps import PhaseCheckpoints
from prunekit.training.resume import read_resume
from prunekit.core.batch import no_progress


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def die_after_checkpoint(number: int) -> None:
    """Every rank ends at once (no clean-up, as a killed job) after its ``number``-th
    checkpoint."""
    original, written = PhaseCheckpoints.write, []

    def write(self, state):
        original(self, state)
        written.append(state.step)
        if len(written) == number:
            os._exit(9)
    PhaseCheckpoints.write = write


def main() -> None:
    folder, settings = Path(sys.argv[1]), json.loads(sys.argv[2])
    if "die_after_checkpoint" in settings:
        die_after_checkpoint(settings.pop("die_after_checkpoint"))
    if settings.pop("resume", False):
        state = read_resume(settings["out"])
        run = Run(RunConfig(**{**state["config"], "out": settings["out"]}), no_progress,
                  resume=state)
    else:
        run = Run(RunConfig(**{**QUICK, **settings}), no_progress)
    try:
        run.prepare()
        run.ctx.out_dir.mkdir(parents=True, exist_ok=True)
        masks = run.execute()
        hashes = {"model": {k: digest(v) for k, v in run.ctx.model.state_dict().items()},
                  "masks": {k: digest(v) for k, v in masks.items()},
                  "world_size": distributed.world_size()}
        (folder / f"rank{distributed.rank()}.json").write_text(json.dumps(hashes))
    finally:
        run.leave()


if __name__ == "__main__":
    main()
