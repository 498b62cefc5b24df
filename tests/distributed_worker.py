"""One rank of a torchrun launch for tests/test_distributed.py (not a test module itself).

Runs ``prunekit run`` with the JSON settings of argv[2] on this rank and writes, into the folder
argv[1], ``rank<N>.json``: a hash of every model tensor and every mask as this rank ends.
"""
import hashlib
import json
import sys
from pathlib import Path

import torch

from prunekit import distributed
from prunekit.engine import QUICK, Run, RunConfig
from prunekit.training import no_progress


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def main() -> None:
    folder, settings = Path(sys.argv[1]), json.loads(sys.argv[2])
    run = Run(RunConfig(**{**QUICK, **settings}), no_progress)
    try:
        run.prepare()
        run.out_dir.mkdir(parents=True, exist_ok=True)
        run.execute()  # every rank writes its checkpoint: rank 0 into --out, the others into
        # a folder of their own, removed by leave()
        masks = torch.load(run.out_dir / "checkpoint.pt", weights_only=True)["masks"]
        hashes = {"model": {k: digest(v) for k, v in run.model.state_dict().items()},
                  "masks": {k: digest(v) for k, v in masks.items()},
                  "world_size": distributed.world_size()}
        (folder / f"rank{distributed.rank()}.json").write_text(json.dumps(hashes))
    finally:
        run.leave()


if __name__ == "__main__":
    main()
