"""A run's data: the device, the splits as the options cut them, loaders and scoring batches."""
from __future__ import annotations

import itertools
import json
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Subset

from ..core import distributed
from ..core.batch import to_device
from ..data.augment import Augmented, SeededSampler
from ..errors import PrunekitError
from .config import RunConfig

BATCH_SEEDS = 1_000_003  # scoring batch i of seed s draws from seed s * BATCH_SEEDS + i


class Batches:
    """The first ``count`` batches of a loader, moved to ``device``; sized for progress bars.

    While the caller works on batch i, random draws (dropout) come from a generator seeded by
    (``seed``, i) and the global one is restored after: a batch's gradients do not depend on
    the batches before it, so under torchrun, where each rank gets its share of the batches
    (``distributed.shard``), the ranks' sums equal one process's.
    """

    def __init__(self, loader: DataLoader, count: int, device: torch.device, seed: int = 0):
        self.loader, self.count, self.device, self.seed = loader, count, device, seed

    def __len__(self) -> int:
        return distributed.shard_size(min(self.count, len(self.loader)))

    def __iter__(self) -> Iterator[dict]:
        cuda = [self.device.index or 0] if self.device.type == "cuda" else []
        numbered = enumerate(itertools.islice(self.loader, self.count))
        for index, batch in distributed.shard(numbered):
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed * BATCH_SEEDS + index)
                yield to_device(batch, self.device)


def resolve_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise PrunekitError(f"unknown device {name!r}; use cpu or cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PrunekitError("--device cuda was asked for, but this machine has no usable CUDA GPU")
    if device.type not in ("cpu", "cuda"):
        raise PrunekitError(f"unsupported device {name!r}; use cpu or cuda")
    return device


def loader(dataset, config: RunConfig, shuffle: bool,
           batch_size: int | None = None) -> DataLoader:
    """Batches of ``batch_size`` (default --batch-size), shuffled by a generator of the seed."""
    batch_size = batch_size or config.batch_size
    generator = torch.Generator().manual_seed(config.seed)
    # An augmented set takes each epoch's seed with its shuffled indices.
    augmented = isinstance(dataset, Augmented)
    if augmented and not shuffle:
        raise ValueError("an augmented dataset is read in a shuffled order")
    sampler = SeededSampler(dataset, generator) if augmented else None
    return DataLoader(dataset, batch_size=batch_size,
                      shuffle=shuffle and sampler is None, sampler=sampler,
                      drop_last=shuffle and len(dataset) >= batch_size,
                      generator=generator, num_workers=config.workers,
                      # workers start afresh each epoch: a persistent loader draws its
                      # workers' seed from the generator at its first epoch only, so a
                      # resumed run's batch order would differ from the uninterrupted one's
                      persistent_workers=False)


def scoring_loader(train_loader: DataLoader, config: RunConfig) -> DataLoader:
    """Where the scoring batches come from: the training loader itself at --batch-size (as
    runs always scored), or a loader of the training samples at --score-batch-size."""
    size = score_batch_size(config)
    if size == config.batch_size:
        return train_loader
    return loader(train_loader.dataset, config, shuffle=True, batch_size=size)


def score_batch_size(config: RunConfig) -> int:
    return config.score_batch_size or config.batch_size


def evaluation_subset(val_set, samples: int):
    """``samples`` of the validation split (0: all of it), evenly spread: splits are often
    ordered by scene or building."""
    if 0 < samples < len(val_set):
        return Subset(val_set, evenly_spaced(len(val_set), samples))
    return val_set


def evenly_spaced(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``, the first one 0."""
    return [index * length // count for index in range(count)]


def hold_out(dataset, share: float, most: int) -> tuple[Subset, Subset]:
    """The dataset without its last ``share`` (at least one sample, at most ``most`` when
    positive), and those samples."""
    held = max(1, min(int(len(dataset) * share), most if most > 0 else len(dataset)))
    if held >= len(dataset):
        raise PrunekitError(f"the training split has {len(dataset)} sample(s); holding some out "
                            "to choose the retraining learning rate needs at least 2")
    cut = len(dataset) - held
    return Subset(dataset, range(cut)), Subset(dataset, range(cut, len(dataset)))


def data_record(example: torch.Tensor, train_set, val_set) -> dict:
    """What the run read: the loader (which tells a dataset's layouts apart), the samples'
    size (from the first one, ``example``) and the splits' lengths, as the report keeps them."""
    return {"loader": type(train_set).__name__,
            "image_size": list(example.shape[-2:]),
            "train_samples": len(train_set), "val_samples": len(val_set)}


def baseline_differences(baseline: dict, config: RunConfig, data: dict) -> str | None:
    """Why the --baseline run's Delta_T would compare different evaluations, or None."""
    theirs = baseline.get("config", {})
    differ = [f"--{key.replace('_', '-')}" for key in ("dataset", "image_size", "val_samples")
              if theirs.get(key) != as_json(getattr(config, key))]
    if baseline.get("data", data) != data:
        differ.append("the data read (report 'data')")
    if differ:
        return (f"the baseline run differs in {', '.join(differ)}: Delta_T compares "
                "metrics of different evaluations")
    if "data" not in baseline:
        return ("the baseline report has no 'data' record (an older prunekit, which "
                "evaluated the first --val-samples samples, not samples spread over the "
                "split): Delta_T may compare different evaluations")
    return None


def as_json(value):
    """``value`` as it reads back from report.json (tuples become lists)."""
    return json.loads(json.dumps(value))


def check_not_empty(dataset: str, split: str, samples: int) -> None:
    """A split without samples gives no batch: nothing can train or be measured."""
    if samples == 0:
        raise PrunekitError(f"dataset {dataset}, split {split}: no samples, so no batches; "
                            "check --data-root and the dataset's split files")


def small_data_warnings(config: RunConfig, train_samples: int, val_samples: int,
                        scoring: bool) -> list[str]:
    """One line for each split smaller than what the options ask of it: the run goes on with
    what there is. ``train_samples``: those the run trains and scores on; ``val_samples``: the
    whole validation split; ``scoring``: whether the run reads --score-batches batches."""
    warnings = []
    batch = config.batch_size
    train = f"dataset {config.dataset}, split train: {train_samples} samples"
    if train_samples < batch:
        warnings.append(f"{train}, fewer than --batch-size {batch}; every training batch "
                        f"holds {train_samples}")
    if config.val_samples > val_samples:
        warnings.append(f"dataset {config.dataset}, split val: {val_samples} samples, fewer "
                        f"than --val-samples {config.val_samples}; the evaluation uses all "
                        f"{val_samples}")
    scored = score_batch_size(config)
    if scoring and train_samples < config.score_batches * scored:
        # the loader drops a last partial batch, unless it is the only one
        batches = min(config.score_batches, max(1, train_samples // scored))
        option = "--score-batch-size" if config.score_batch_size else "--batch-size"
        warnings.append(f"{train}, fewer than --score-batches {config.score_batches} x "
                        f"{option} {scored} = {config.score_batches * scored}; scoring "
                        f"sums {batches} batch(es) of {min(scored, train_samples)}")
    return warnings
