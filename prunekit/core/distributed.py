"""One run over several processes with PyTorch's own engine (torch.distributed, set up by torchrun).

``torchrun --nproc_per_node N -m prunekit run ...`` (or ``prunekit run --nproc N``) starts N
copies of the run. Every rank walks the same seeded batch order and keeps every N-th batch
(``shard``), so together the ranks see exactly the batches one process would see:

- scoring: each rank sums the saliency of its batches and the sums are added across ranks
  (``sum_across``) before anything else, so every rank thresholds the same scores and gets the
  same masks as one process over the same batches;
- training: DistributedDataParallel averages the gradients, the masks are applied on every
  rank; RigL's grow scores are summed over the ranks' batches and rank 0's new masks are sent
  to the others (``from_writer``); the losses that adaptive task weights follow are averaged
  over the ranks (``mean_across``), so every rank weighs the tasks alike;
- outputs: only rank 0 (``is_writer``) writes files and prints.

Without torchrun (``WORLD_SIZE`` unset or 1) every function here is the one-process case.
"""
from __future__ import annotations

import itertools
import os
from typing import Iterable, Iterator, TypeVar

import torch
import torch.distributed as dist
from torch import nn

Item = TypeVar("Item")


def launched() -> bool:
    """Whether torchrun started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launched_rank() -> int:
    """This process's rank as torchrun set it (0 without torchrun), before joining the group."""
    return int(os.environ.get("RANK", "0")) if launched() else 0


def start(device: torch.device) -> torch.device:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA) and return this rank's device
    (``cuda`` becomes ``cuda:LOCAL_RANK``); the device unchanged when not launched."""
    if not launched():
        return device
    if device.type == "cuda":  # one GPU per process, whatever index was asked for
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def stop() -> None:
    """Leave the process group (when this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_writer() -> bool:
    """Rank 0, the one process that writes outputs (the only one without torchrun)."""
    return rank() == 0


def shard(items: Iterable[Item]) -> Iterator[Item]:
    """This rank's share of ``items``: those at positions rank, rank + N, rank + 2N, ..."""
    return itertools.islice(items, rank(), None, world_size())


def shard_size(count: int) -> int:
    """How many of ``count`` items ``shard`` gives this rank."""
    return len(range(rank(), count, world_size()))


def sum_across(tensors: Iterable[torch.Tensor]) -> None:
    """Replace each tensor by its sum over the ranks (one all-reduce for all of them)."""
    if not active():
        return
    tensors = list(tensors)
    if not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    for tensor, summed in zip(tensors, flat.split([t.numel() for t in tensors])):
        tensor.copy_(summed.view_as(tensor))


def mean_across(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks."""
    if not active():
        return values
    names = sorted(values)
    flat = torch.tensor([values[name] for name in names], dtype=torch.float64,
                        device=collective_device())
    dist.all_reduce(flat)
    return {name: float(value) / world_size() for name, value in zip(names, flat.tolist())}


def collective_device() -> str:
    return "cuda" if dist.get_backend() == "nccl" else "cpu"  # NCCL reduces CUDA tensors only


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank (so that every rank takes the same branch)."""
    if not active():
        return flag
    value = torch.tensor([int(flag)], device=collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def from_writer(tensors: Iterable[torch.Tensor]) -> None:
    """Overwrite each tensor on every rank with rank 0's (bool tensors too)."""
    if not active():
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=0)


def for_training(model: nn.Module) -> nn.Module:
    """``model`` wrapped in DistributedDataParallel when several processes train it: gradients
    are averaged over the ranks in backward, so every rank takes the same optimiser step."""
    if not active():
        return model
    device = next(model.parameters()).device
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device] if device.type == "cuda" else None)
