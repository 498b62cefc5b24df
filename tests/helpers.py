"""What several test modules share: the CLI run in-process, the devices kernels run on, and
small NYUv2 folders written on the fly."""
import json

import numpy as np
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


def quick_run(capsys, out_dir, *extra):
    """``prunekit run --quick`` in-process into ``out_dir``; returns (report, stdout)."""
    code, out, err = invoke(capsys, "run", "--quick", "--no-progress", "--out", str(out_dir),
                            *extra)
    assert code == 0, err
    return json.loads((out_dir / "report.json").read_text()), out


def write_npy_folders(root, split, count, arrays):
    """ROOT/SPLIT/FOLDER/I.npy for I < count, each from ``arrays[FOLDER]()``, in order."""
    for folder in arrays:
        (root / split / folder).mkdir(parents=True)
    for i in range(count):
        for folder, array in arrays.items():
            np.save(root / split / folder / f"{i}.npy", array())


def write_nyuv2(root, split, count, size=(6, 8)):
    """A random NYUv2 split in the .npy folder layout."""
    rng = np.random.default_rng(0)

    def normal():
        vectors = rng.normal(size=(*size, 3)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    write_npy_folders(root, split, count, {
        "image": lambda: rng.random((*size, 3), dtype=np.float32),
        "label": lambda: rng.integers(-1, 13, size).astype(np.float32),
        "depth": lambda: rng.random((*size, 1), dtype=np.float32) * 5,
        "normal": normal})
