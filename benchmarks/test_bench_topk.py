"""Speed of prunekit's topk_mask against two plain-torch ways of building a top-k mask.

Run with:  make bench   (or .venv/bin/python -m pytest benchmarks)

Each (device, N, keep ratio) is one benchmark group, so the table pytest-benchmark prints puts
the kernel and its baselines side by side; benchmarks/conftest.py adds a speed-up summary.

  kernel          prunekit.ops.topk_mask(flat, k): exact k, ties to the lower flat index.
  topk_scatter    torch.topk(flat, k) (sorted, its default), indices scattered into a bool mask.
  topk_unsorted   the same with sorted=False, which a mask does not need: the fairer topk baseline.
  kthvalue_ge     torch.kthvalue threshold, then flat >= threshold. Speed reference only: with
                  ties at the threshold it keeps more than k elements.

Inputs are float32 uniform random from a fixed seed. Rounds are fixed (pedantic mode, one warm-up
round) so the whole suite takes about two minutes on a 2-core CPU.
"""
import pytest
import torch

from prunekit.ops import cuda_compiled, topk_mask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and cuda_compiled() else [])
SIZES = [1_000_000, 10_000_000]
RATIOS = [0.1, 0.5]
ROUNDS = {1_000_000: 60, 10_000_000: 30}


def kernel(flat, k):
    return topk_mask(flat, k)


def topk_scatter(flat, k):
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    return mask.scatter_(0, torch.topk(flat, k).indices, True)


def topk_unsorted(flat, k):
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    return mask.scatter_(0, torch.topk(flat, k, sorted=False).indices, True)


def kthvalue_ge(flat, k):
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    return flat >= threshold


METHODS = {f.__name__: f for f in (kernel, topk_scatter, topk_unsorted, kthvalue_ge)}

_scores = {}


def scores(n, device):
    key = (n, device)
    if key not in _scores:
        _scores.clear()  # keep at most one 10M tensor around
        g = torch.Generator().manual_seed(n)
        _scores[key] = torch.rand(n, generator=g, dtype=torch.float32).to(device)
    return _scores[key]


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("ratio", RATIOS, ids=lambda r: f"keep{r}")
@pytest.mark.parametrize("n", SIZES, ids=lambda n: f"N{n // 1_000_000}M")
@pytest.mark.parametrize("device", DEVICES)
def test_topk_mask_speed(benchmark, device, n, ratio, method):
    flat = scores(n, device)
    k = int(n * ratio)
    fn = METHODS[method]
    benchmark.group = f"{device} N={n:,} keep={ratio}"
    benchmark.extra_info.update(device=device, n=n, ratio=ratio, k=k, method=method)

    if device == "cuda":
        def target():
            out = fn(flat, k)
            torch.cuda.synchronize()
            return out
    else:
        def target():
            return fn(flat, k)

    mask = benchmark.pedantic(target, rounds=ROUNDS[n], iterations=1, warmup_rounds=1)

    # Sanity of what was timed (outside the timing): the exact methods keep exactly k.
    assert mask.dtype == torch.bool and mask.shape == flat.shape
    kept = int(mask.sum())
    if method == "kthvalue_ge":
        assert kept >= k
    else:
        assert kept == k
