"""``prunekit run`` as a pipeline: configuration, one context of run state, steps, modes, outputs.

    config.RunConfig --modes.resolved/select--> engine.Run(RunContext) --> Mode.execute(steps)
        --> evaluation, checkpoint.pt --> report.json

``engine`` reads top to bottom; ``modes`` holds one module per path a run takes. ``compare`` and
``config_file`` serve the ``compare`` command and ``--config``.
"""
from .config import QUICK, RunConfig
from .engine import Run, RunResult, resume_run, run
from .outputs import load_checkpoint, read_checkpoint

__all__ = ["QUICK", "RunConfig", "Run", "RunResult", "resume_run", "run", "load_checkpoint",
           "read_checkpoint"]
