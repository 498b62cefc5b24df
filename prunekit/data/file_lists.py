"""The JSON file lists of the DiSparse and AdaShare loaders (NYUv2's ``nyu_v2_3task.json``,
Tiny-Taskonomy's ``taskonomy.json``): ``{"train": [[path, ...], ...], "test": [...]}``, each entry
one sample's files, relative to the data root, in a fixed order."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..errors import PrunekitError, one_line

# prunekit's split -> the lists' key (the papers evaluate on their 'test' lists)
SPLIT_KEYS = {"train": "train", "val": "test"}


def read_file_lists(path: Path, split: str, fields: Sequence[str]) -> list[list[str]]:
    """The entries of ``split`` in the lists file ``path``, each checked to be one path per
    field (``fields`` names them, in order, for the error messages)."""
    key = SPLIT_KEYS[split]
    try:
        lists = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PrunekitError(f"cannot read {str(path)!r} as JSON: {one_line(error, 200)}") from None
    if not isinstance(lists, dict):
        raise PrunekitError(f"{str(path)!r} is not a file of sample lists: expected an object of "
                            f"splits, got {type(lists).__name__}")
    if key not in lists:
        raise PrunekitError(f"{str(path)!r} has no {key!r} split (it has: "
                            f"{', '.join(map(str, lists)) or 'none'})")
    entries = lists[key]
    if not isinstance(entries, list) or not entries:
        raise PrunekitError(f"split {key!r} of {str(path)!r} is not a non-empty list of samples")
    for number, entry in enumerate(entries):
        if (not isinstance(entry, list) or len(entry) != len(fields)
                or not all(isinstance(p, str) for p in entry)):
            raise PrunekitError(f"entry {number} of split {key!r} in {str(path)!r} is not a list "
                                f"of {len(fields)} paths [{', '.join(fields)}]: "
                                f"{one_line(json.dumps(entry), 80)}")
    return entries
