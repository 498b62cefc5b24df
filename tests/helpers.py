"""What several test modules share: the CLI run in-process, and the devices kernels run on."""
import pytest
import torch

from prunekit import ops
from prunekit.cli import main

CUDA_AVAILABLE = torch.cuda.is_available()
CUDA = CUDA_AVAILABLE and ops.cuda_compiled()
CUDA_SKIP_REASON = ("no CUDA GPU on this machine" if not CUDA_AVAILABLE
                    else "prunekit._C was built without its CUDA kernels")
# Every device-dependent kernel test runs on each of these. Without a GPU, each module reports
# its CUDA tests as one explicit skip (with CUDA_SKIP_REASON), not one per parametrized case.
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


def invoke(capsys, *args):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_.value.code, out, err
