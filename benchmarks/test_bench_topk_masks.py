"""Global top-k masks over ~50 tensors per task: the radix kernel against torch's concatenate-then-
select, and against the memory floor measured in the same run.

Run with:  make bench   (or .venv/bin/python -m pytest benchmarks -k topk_masks)
           add  -k "N25M"  or  -k "not N100M"  to pick sizes (100M needs ~2 GB and minutes).

Each task has its own scores over N weights in 50 tensors of equal size; a method makes every
task's masks (the pipeline thresholds each task separately).

  kernel            prunekit.ops.topk_masks(task's tensors, k): exact k, no concatenation or sort.
  fused_snip        the same with criterion="snip" on (weights, gradients): the scores |w*g| are
                    never stored. Reads two inputs per element, so its floor is twice as high.
  cat_topk          torch.cat, torch.topk(k) (unsorted), threshold = smallest kept value, then each
                    tensor compared against it (keeps more than k on ties: speed reference).
  cat_kthvalue      torch.cat, torch.kthvalue threshold, then each tensor compared against it.
  memory_floor      what the kernel cannot avoid: one reading pass over every tensor, then a
                    second reading pass with the bool mask write, done by torch's vectorised sum
                    and fill. From N = 25M on the inputs are larger than the caches, so the second
                    pass reads memory again: this is the two-pass floor at this machine's
                    bandwidth, and extra_info["gb_per_s"] is that bandwidth.

The summary's ratio is each method's median over the kernel's: above 1 the kernel is faster;
memory_floor's ratio is the fraction of the floor the kernel reaches (the issue asks >= 1/1.5).
Scores are float32 uniform random from a fixed seed. CUDA cases run when a GPU is present.
"""
import pytest
import torch

from prunekit.ops import cuda_compiled, topk_masks

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_compiled() else [])
TENSORS = 50
SIZES = [1_000_000, 25_000_000, 100_000_000]
RATIOS = [0.1, 0.5, 0.9]
TASKS = [1, 3]
ROUNDS = {1_000_000: 20, 25_000_000: 7, 100_000_000: 2}


def kernel(tasks, k):
    return [topk_masks(scores, k).masks for scores, _ in tasks]


def fused_snip(tasks, k):
    return [topk_masks(weights, k, criterion="snip", grads=grads).masks
            for weights, grads in tasks]


def compare_each(tensors, threshold):
    return [t >= threshold for t in tensors]


def cat_topk(tasks, k):
    masks = []
    for scores, _ in tasks:
        kept = torch.topk(torch.cat([t.reshape(-1) for t in scores]), k, sorted=False).values
        masks.append(compare_each(scores, kept.min()))
    return masks


def cat_kthvalue(tasks, k):
    masks = []
    for scores, _ in tasks:
        flat = torch.cat([t.reshape(-1) for t in scores])
        masks.append(compare_each(scores, torch.kthvalue(flat, flat.numel() - k + 1).values))
    return masks


def memory_floor(tasks, k):
    masks = []
    for scores, _ in tasks:
        for t in scores:
            t.sum()
        task_masks = []
        for t in scores:
            t.sum()
            task_masks.append(torch.empty(t.shape, dtype=torch.bool, device=t.device).fill_(True))
        masks.append(task_masks)
    return masks


METHODS = {f.__name__: f for f in (kernel, fused_snip, cat_topk, cat_kthvalue, memory_floor)}
_inputs = {}


def inputs(n, tasks, device):
    """Per task: (scores, gradients), the scores doubling as the weights of fused_snip."""
    key = (n, tasks, device)
    if key not in _inputs:
        _inputs.clear()  # keep one size's inputs at most
        generator = torch.Generator().manual_seed(n)
        _inputs[key] = [tuple([torch.rand(n // TENSORS, generator=generator).to(device)
                               for _ in range(TENSORS)] for _ in range(2))
                        for _ in range(tasks)]
    return _inputs[key]


def timed(method, device):
    if device == "cpu":
        return method

    def synchronised(tasks, k):
        masks = method(tasks, k)
        torch.cuda.synchronize()
        return masks
    return synchronised


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"keep{r}")
@pytest.mark.parametrize("tasks", TASKS, ids=lambda t: f"tasks{t}")
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N{n // 1_000_000}M")
@pytest.mark.parametrize("device", DEVICES)
def test_topk_masks_speed(benchmark, device, n, tasks, ratio, method):
    task_inputs = inputs(n, tasks, device)
    k = int(n * ratio)
    benchmark.group = f"{device} {tasks}x{TENSORS} tensors N={n:,} keep={ratio}"
    benchmark.extra_info.update(device=device, n=n, tasks=tasks, ratio=ratio, k=k, method=method,
                                baseline="kernel")
    masks = benchmark.pedantic(timed(METHODS[method], device), args=(task_inputs, k),
                               rounds=ROUNDS[n], iterations=1, warmup_rounds=1)
    if method == "memory_floor":
        read_bytes = 2 * sum(t.numel() * t.element_size() for scores, _ in task_inputs
                             for t in scores)
        moved = read_bytes + tasks * n  # two reads of the scores, one byte written per mask bit
        benchmark.extra_info["gb_per_s"] = moved / benchmark.stats.stats.median / 1e9
    # what was timed, checked outside the timing: the exact kernel keeps exactly k
    for task_masks in masks:
        kept = sum(int(m.sum()) for m in task_masks)
        assert kept == k if method in ("kernel", "fused_snip") else kept >= k
